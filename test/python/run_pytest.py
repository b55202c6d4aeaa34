"""ctest driver for test/python: skips (exit 77) when pytest or numpy is missing."""
import importlib.util
import subprocess
import sys

missing = [m for m in ("pytest", "numpy") if importlib.util.find_spec(m) is None]
if missing:
    print(f"skipped: {', '.join(missing)} not installed for {sys.executable} "
          "(apt-get install python3-pytest python3-numpy)")
    sys.exit(77)
sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *sys.argv[1:]]))
