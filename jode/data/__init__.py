"""Data sets shipped with jode or read from user files."""

from .images import load_digits as load_digits
from .images import load_mnist as load_mnist
from .images import read_idx as read_idx
