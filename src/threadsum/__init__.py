"""threadsum: fine-tune and serve BART-family summarizers on email threads."""
__version__ = "0.1.0"
