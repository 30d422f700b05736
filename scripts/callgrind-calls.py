#!/usr/bin/env python3
"""How many times functions matching REGEX were called, from a callgrind
output file: scripts/callgrind-calls.py CALLGRIND_OUT REGEX. The
callgrind-*.sh scripts count units of work (messages, deliveries) this way
instead of trusting a rate times a duration."""
import re
import sys

path, pattern = sys.argv[1], re.compile(sys.argv[2])
names = {}
total = 0
target = None
with open(path, errors="replace") as f:
    for line in f:
        if line.startswith(("fn=", "cfn=")):
            body = line.split("=", 1)[1].strip()
            m = re.match(r"\((\d+)\)(?: (.*))?", body)
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                name = names.get(m.group(1), "")
            else:
                name = body
            if line.startswith("cfn="):
                target = name
        elif line.startswith("calls=") and target is not None:
            if pattern.search(target):
                total += int(line.split("=", 1)[1].split()[0])
            target = None
print(total)
