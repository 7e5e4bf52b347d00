"""Run the pmxlock CLI (PyPI pmxlock, unmodified) with its two hard-coded directories moved:
ClusterLock.flock_dir (/run/lock/pmxlock) and ClusterLock.pmxlock_dir (/etc/pve/priv/lock)
are class attributes; tests point them at LOCKFN_PMXLOCK_DIR and LOCKFN_PMXCFS_DIR.

    python pmxlock_run.py [pmxlock args...]      e.g.  -w 10 NAME sh -c '...'
"""
import os
import pathlib
import sys

from pmxlock import ClusterLock, cli

ClusterLock.flock_dir = pathlib.Path(os.environ["LOCKFN_PMXLOCK_DIR"])
ClusterLock.pmxlock_dir = pathlib.Path(os.environ["LOCKFN_PMXCFS_DIR"])
sys.argv = ["pmxlock"] + sys.argv[1:]
sys.exit(cli.main())
