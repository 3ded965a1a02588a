# Entry point of the runtime stub (PyInstaller runs this file as __main__).
from runtime.cli import main

main()
