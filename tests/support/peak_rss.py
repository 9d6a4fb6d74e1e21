"""Run a command and write its peak RSS (bytes) to a file: ``python peak_rss.py OUT CMD...``.

Linux counts the memory a process had before exec in its ru_maxrss: a child forked straight
from a large test process reports that process's size. Started from this small one, the
command's ru_maxrss is its own (within this script's few MiB). The exit code is the command's.
"""

import os
import subprocess
import sys

proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss * 1024))  # Linux: KiB
sys.exit(os.waitstatus_to_exitcode(status))
