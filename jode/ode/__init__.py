"""jode's numerical core: Runge-Kutta solvers, step control, adjoints and `solve`."""
