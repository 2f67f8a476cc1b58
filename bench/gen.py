#!/usr/bin/env python3
"""Writes an OpenAI Batch API JSONL file of N chat requests spread over M models."""
import json
import sys

lines = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
models = int(sys.argv[2]) if len(sys.argv) > 2 else 4
out = sys.stdout
for i in range(lines):
    out.write(json.dumps({
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": f"model-{i % models}",
            "messages": [{"role": "user", "content": f"Say hello to number {i}."}],
            "max_tokens": 16,
        },
    }, separators=(",", ":")))
    out.write("\n")
