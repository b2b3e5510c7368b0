"""Layer 8, the commands: argv -> a library call -> an exit status. The only layer that configures
logging or prints; everything below raises."""

from .main import main as main
