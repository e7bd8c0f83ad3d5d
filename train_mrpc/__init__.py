"""Fine-tune BERT-style models on GLUE MRPC with Hugging Face Accelerate.

Importing the package is cheap on purpose: the heavy libraries are imported by the modules that use
them, after the CLI has decided whether the Hugging Face Hub is reachable (see ``hub.py``).
"""

__version__ = "0.1.0"
