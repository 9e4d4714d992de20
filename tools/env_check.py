"""Install check shared by the launchers (run_macos.command and run_windows.bat).

Standard library only, so it runs on the system Python before .venv exists
as well as with the venv's Python. Run it from the app's folder:

    python tools/env_check.py check-python     is this Python 3.10 or newer?
    python tools/env_check.py needs-install    must requirements.txt be installed into .venv?
    python tools/env_check.py install-torch    the CUDA build of PyTorch (Windows with an NVIDIA GPU), or its CPU
                                               build (Linux without one), from PyTorch's index
    python tools/env_check.py mark-installed   remember that requirements.txt is now installed
    python tools/env_check.py torch-build      which PyTorch build this computer gets, and why

Exit codes (the launchers rely on them):
    check-python    0 = suitable, 1 = too old
    needs-install   0 = yes, install now, 1 = no, already up to date, 2 = error
    install-torch   0 = done (also when it fell back to the CPU build), 2 = error
    mark-installed  0 = done, 2 = error

needs-install compares a SHA-256 hash of requirements.txt with the stamp that
mark-installed wrote inside the venv (.venv/requirements.sha256). Line endings
and a UTF-8 byte-order mark are normalised first, so a file that only changed
from LF to CRLF (a git checkout on Windows, an editor) does not cause a reinstall.
Files pulled in with "-r other.txt" or "-c constraints.txt" are part of the hash.

The stamp's second line remembers which PyTorch build is installed ("torch-build: cu128" for
one from PyTorch's CUDA index, "torch-build: cpu" for its CPU build, "torch-build: default"
otherwise) and a build that failed to install ("torch-build: default (cu128 failed)"). The
default PyPI wheel has no CUDA on Windows, so there install-torch first installs the pinned torch
and torchvision from PyTorch's own index when nvidia-smi lists a GPU. On Linux it is the other way
round: PyPI's wheel brings about 4 GB of CUDA libraries, so without an NVIDIA driver (no
nvidia-smi, no /proc/driver/nvidia) install-torch installs the CPU build from PyTorch's index.
If either fails, the standard build is used and the failure is remembered, so later starts do not
download again. needs-install also answers "install" when a CUDA build is wanted that is neither
installed nor remembered as failed (a GPU appeared, a stamp from before this check). Which build
fits this computer is decided in core/device/build.py, loaded from the app folder (it needs only the
standard library); nvidia-smi runs only on Windows (or with CAPTION_TORCH_CUDA=1).

The syntax stays compatible with old Pythons on purpose: a too-old Python must
be able to run "check-python" and say in plain words that it is too old.
"""
from __future__ import print_function

import argparse
import hashlib
import os
import platform
import re
import subprocess
import sys

MIN_VERSION = (3, 10)
STAMP_NAME = "requirements.sha256"
FAILED_NAME = "torch-build.failed"  # a CUDA build install-torch could not install, until mark-installed notes it
BUILD_PREFIX = "torch-build: "
APP_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VENV = ".venv"
DEFAULT_REQUIREMENTS = "requirements.txt"
INCLUDE_LINE = re.compile(r"^(?:-r|-c|--requirement|--constraint)[\s=]*(\S+)")


class CheckError(Exception):
    """A problem to report in plain words (exit code 2)."""


def version_text(version):
    return ".".join(str(part) for part in version[:3])


def check_python(version=None, executable=None):
    """Return (ok, message) for the given (default: running) Python."""
    version = tuple(sys.version_info[:3]) if version is None else tuple(version)
    executable = sys.executable if executable is None else executable
    if version[:2] < MIN_VERSION:
        return False, (
            "Python %s (%s) is too old: this app needs Python %s or newer."
            % (version_text(version), executable, version_text(MIN_VERSION))
        )
    return True, "Using Python %s (%s)" % (version_text(version), executable)


def rosetta_warning():
    """A warning when an Intel (x86_64) Python runs under Rosetta on an Apple Silicon Mac."""
    if platform.system() != "Darwin" or platform.machine() != "x86_64":
        return None
    try:
        translated = subprocess.check_output(
            ["sysctl", "-n", "sysctl.proc_translated"], stderr=subprocess.STDOUT
        )
    except Exception:
        return None
    if translated.strip() != b"1":
        return None
    return (
        "Warning: this Python is an Intel (x86_64) build running under Rosetta on an "
        "Apple Silicon Mac. PyTorch has no Intel-Mac builds any more, so installing the "
        "packages will probably fail. Install a native Python (the python.org installer "
        "or Homebrew in /opt/homebrew), delete the .venv folder and start again."
    )


def normalised_bytes(path):
    with open(path, "rb") as handle:
        data = handle.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def included_files(data):
    """Names given to -r/-c lines ("-r base.txt", "--constraint=c.txt") of a requirements file."""
    names = []
    for line in data.decode("utf-8", "replace").split("\n"):
        match = INCLUDE_LINE.match(line.strip())
        if match and "://" not in match.group(1):
            names.append(match.group(1))
    return names


def requirements_hash(path):
    """SHA-256 of the requirements file and the files it includes, line endings normalised."""
    if not os.path.isfile(path):
        raise CheckError("The requirements file %s is missing." % path)
    digest = hashlib.sha256()
    todo, seen = [(path, "")], set()
    while todo:
        current, name = todo.pop(0)
        key = os.path.normcase(os.path.abspath(current))
        if key in seen:
            continue
        seen.add(key)
        if not os.path.isfile(current):
            raise CheckError("%s is missing (it is named in %s)." % (current, path))
        data = normalised_bytes(current)
        # Included files go in with the name written in the -r line (not an absolute path),
        # so moving the whole app folder does not cause a reinstall.
        digest.update(name.encode("utf-8") + b"\0" + data + b"\0")
        for included in included_files(data):
            # pip reads a nested -r/-c path relative to the file that names it.
            todo.append((os.path.join(os.path.dirname(current), included), included))
    return digest.hexdigest()


def stamp_path(venv):
    return os.path.join(venv, STAMP_NAME)


def read_stamp_lines(venv):
    try:
        with open(stamp_path(venv), "r") as handle:
            return handle.read().split("\n")
    except (IOError, OSError):
        return None


def read_stamp(venv):
    """The requirements hash of the last finished install, or None."""
    lines = read_stamp_lines(venv)
    return lines[0].strip() if lines else None


def read_build(venv):
    """(installed build, build that failed to install or None) from the stamp; a stamp without it: "default"."""
    for line in read_stamp_lines(venv) or []:
        if line.startswith(BUILD_PREFIX):
            match = re.match(r"^(\S+)(?: \((\S+) failed\))?$", line[len(BUILD_PREFIX):].strip())
            if match:
                return match.group(1), match.group(2)
    return "default", None


def device_module():
    """core/device/build.py of this app: which PyTorch build fits this computer (standard library only)."""
    if APP_DIR not in sys.path:
        sys.path.insert(0, APP_DIR)
    import core.device.build
    return core.device.build


def wanted_build(requirements):
    """("cu128" or None for the standard build, why in plain words)."""
    device = device_module()
    return device.wanted_torch_build(device.pinned_versions(requirements))


def needs_install(venv, requirements):
    """Return (needed, reason)."""
    if not os.path.isdir(venv):
        raise CheckError("The environment folder %s does not exist yet." % venv)
    current = requirements_hash(requirements)
    stored = read_stamp(venv)
    if stored is None:
        return True, "The packages in %s have not been installed into %s yet." % (requirements, venv)
    if stored != current:
        return True, "%s changed since the last install." % requirements
    installed, failed = read_build(venv)
    wanted, why = wanted_build(requirements)
    # Not for the CPU build: pip would swap torch itself, but keep the CUDA libraries it pulled in, so a working
    # install would download again and stay as big; a new install (or a changed requirements.txt) gets it.
    if wanted not in (None, "cpu") and wanted not in (installed, failed):
        return True, "The PyTorch build changes (%s now %s): %s" % (installed, wanted, why)
    return False, "The packages in %s are already installed." % requirements


def installed_torch_build():
    """"cu128" or "cpu" for a torch from PyTorch's index (its version ends in +cu128, +cpu), else "default"."""
    try:
        from importlib import metadata
        version = metadata.version("torch")
    except Exception:  # no torch (yet), or no importlib.metadata
        return "default"
    match = re.search(r"\+(cu\d+|cpu)$", version)
    return match.group(1) if match else "default"


def write_failed(venv, build):
    with open(os.path.join(venv, FAILED_NAME), "w") as handle:
        handle.write(build + "\n")


def pip(*args):
    sys.stdout.flush()  # our lines first, then pip's, also when the output goes to a pipe or a file
    return subprocess.call([sys.executable, "-m", "pip"] + list(args) + ["--disable-pip-version-check"])


def install_torch(venv, requirements):
    """Install the CUDA or CPU build of PyTorch where it is wanted; on failure say so and go on. Return the build
    or None."""
    if not os.path.isdir(venv):
        raise CheckError("The environment folder %s does not exist." % venv)
    device = device_module()
    if os.path.isfile(os.path.join(venv, FAILED_NAME)):
        os.remove(os.path.join(venv, FAILED_NAME))
    wanted, why = wanted_build(requirements)
    print("PyTorch: " + why)
    if wanted is None:
        return None
    if wanted == device.CPU_BUILD:
        print("Installing the CPU build of PyTorch from %s." % device.index_url(wanted))
    else:
        print("Installing the CUDA build of PyTorch (%s) from %s." % (wanted, device.index_url(wanted)))
        print("The first time this downloads about 3 GB and can take a while ...")
    if pip(*device.cuda_install_args(wanted, device.pinned_versions(requirements))) == 0:
        return wanted
    print("")
    if wanted == device.CPU_BUILD:
        print("Could not install the CPU build of PyTorch (pip's messages above say why).")
        print("Going on with the standard PyTorch build: the app works the same, but the install")
        print("takes about 4 GB more (the CUDA libraries, which this computer does not use).")
    else:
        print("Could not install the CUDA build of PyTorch (pip's messages above say why).")
        print("Going on with the standard PyTorch build: the app works on the CPU, training is slower.")
    print("This is remembered, so later starts do not try again. To try again: delete the file")
    print("%s and start the launcher again." % stamp_path(venv))
    if wanted != device.CPU_BUILD:
        print("The Home page of the app shows the command that installs the CUDA build by hand.")
    print("")
    write_failed(venv, wanted)
    return None


def mark_installed(venv, requirements):
    if not os.path.isdir(venv):
        raise CheckError("The environment folder %s does not exist." % venv)
    current = requirements_hash(requirements)
    failed_file = os.path.join(venv, FAILED_NAME)
    build = installed_torch_build()
    if os.path.isfile(failed_file):
        with open(failed_file, "r") as handle:
            failed = handle.read().strip()
        if failed and failed != build:
            build += " (%s failed)" % failed
    target = stamp_path(venv)
    temporary = target + ".tmp"
    with open(temporary, "w") as handle:
        handle.write(current + "\n" + BUILD_PREFIX + build + "\n")
    if os.path.exists(target):
        os.remove(target)
    os.rename(temporary, target)
    if os.path.isfile(failed_file):
        os.remove(failed_file)
    return current


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("check-python", help="is this Python %s or newer?" % version_text(MIN_VERSION))
    for name, text in (("needs-install", "exit 0 when requirements.txt must be installed, 1 when up to date"),
                       ("install-torch", "the CUDA build of PyTorch (Windows with an NVIDIA GPU) or the CPU build "
                        "(Linux without one) from PyTorch's index"),
                       ("mark-installed", "store the hash of requirements.txt inside the venv"),
                       ("torch-build", "which PyTorch build this computer gets, and why")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--venv", default=DEFAULT_VENV, help="default: %(default)s")
        command.add_argument("--requirements", default=DEFAULT_REQUIREMENTS, help="default: %(default)s")
    args = parser.parse_args(argv)

    if args.command == "check-python":
        ok, message = check_python()
        print(message, file=sys.stdout if ok else sys.stderr)
        warning = rosetta_warning() if ok else None
        if warning:
            print(warning, file=sys.stderr)
        return 0 if ok else 1

    if args.command not in ("needs-install", "install-torch", "mark-installed", "torch-build"):
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.command == "needs-install":
            needed, reason = needs_install(args.venv, args.requirements)
            print(reason)
            return 0 if needed else 1
        if args.command == "install-torch":
            install_torch(args.venv, args.requirements)
            return 0
        if args.command == "torch-build":
            wanted, why = wanted_build(args.requirements)
            print("%s: %s" % (wanted or "standard", why))
            return 0
        mark_installed(args.venv, args.requirements)
        print("Remembered the installed %s in %s." % (args.requirements, stamp_path(args.venv)))
        return 0
    except (CheckError, IOError, OSError) as error:
        print("Error: %s" % error, file=sys.stderr)
        return 2
    except Exception as error:  # a traceback would exit 1, which means "up to date" to the launchers
        print("Error: %s: %s" % (type(error).__name__, error), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
