#!/usr/bin/env python3
"""Build a furoshiki executable from a GGUF. See `python build.py --help`."""

from builder.cli import main

if __name__ == "__main__":
    main()
