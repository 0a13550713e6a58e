"""Data sets shipped with jode or read from user files."""

from .images import load_digits as load_digits
from .images import load_mnist as load_mnist
from .images import read_idx as read_idx
from .lynx_hare import load_lynx_hare as load_lynx_hare
from .toy import checkerboard as checkerboard
from .toy import eight_gaussians as eight_gaussians
from .toy import sample_density as sample_density
from .toy import spirals as spirals
from .toy import two_moons as two_moons
