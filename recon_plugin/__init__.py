"""recon_plugin: RGANCS MRI reconstruction beside the scanner (Gadgetron external gadgets)."""

__version__ = "0.1.0"
