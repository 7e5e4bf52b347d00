#!/usr/bin/env python3
"""Take a lock, show who holds it, release it:  python3 hello_lock.py sem:hello"""
import sys

import lockfn

target = sys.argv[1] if len(sys.argv) > 1 else "sem:hello"
with lockfn.Lock(target, holder="hello_lock.py", timeout=10) as lock:
    print(f"locked {target} token {lock.token}")
    print(lockfn.status(target)["holders"][0]["holder"])
print(f"released {target}")
