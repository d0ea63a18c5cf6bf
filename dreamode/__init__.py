"""dreamode: the DREAM recurrent cell as a continuous-time vector field, integrated by any ODE solver."""

__version__ = "0.1.0"
