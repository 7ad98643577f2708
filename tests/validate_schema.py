#!/usr/bin/env python3
"""Validates JSON lines against a JSON Schema (draft 2020-12) of docs/schema/.

Usage: validate_schema.py SCHEMA FILE...   (each FILE holds one JSON object per line)

Prints "N lines valid" and exits 0, or names the first invalid line (file, line number, the
failing field and why) and exits 1. Needs the `jsonschema` package of the .deps venv
(installed by scripts/setup-deps.sh).
"""
import json
import sys

import jsonschema


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    count = 0
    for path in sys.argv[2:]:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                error = jsonschema.exceptions.best_match(validator.iter_errors(json.loads(line)))
                if error is not None:
                    where = "/".join(str(p) for p in error.absolute_path) or "(the object)"
                    print(f"{path}:{number}: {where}: {error.message}", file=sys.stderr)
                    return 1
                count += 1
    print(f"{count} lines valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
