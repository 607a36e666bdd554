#!/usr/bin/env python3
"""Worker CPU per million records, several builds in one run, without building the Rust bench.

    .venv/bin/python worker/benches/drive.py OLD/tyrell-worker target/release/tyrell-worker

Runs each given tyrell-worker build (`--drain`, production buffer settings), one after the
other, over the same records: N (default 1,000,000) records shaped as the Rust bench's
(`tests/common::records`, schema 2, ~300 B), packed as the indexer packs them (gzip+base64
at level 1; RAW_KIB, default 1024, KiB of NDJSON a message: the indexer's own benchmark,
scripts/bench-swarm, sends 3,571 records of ~280 B in each message, about 1 MiB; SQS's
256 KiB limit is on the encoded body, which these records fill only at ~4 MiB; sessions
before 2026-11-30 packed 256 KiB, four times as many messages), fed to the AWS emulator (moto, from .venv)
keeping the queue <= 10 messages deep. Prints each worker's CPU seconds per million
records (wait4 rusage: user + system), checks every record is in S3, and, measured in this
process on the same bodies, base64 + gunzip alone and with gzip level 1 into 5 MiB objects
(C zlib through Python: a yardstick, not the worker's zlib-rs). PERF=file records a perf
profile of each worker (file.N). A build given with flags, as one quoted argument
("path --receivers 1"), runs with them; each worker's exit counters (its calls) are printed. The Rust bench (`cargo bench -p tyrell-worker --bench
throughput`) measures the same with its comparison in Rust, but builds the test support's
AWS SDKs in release first (too long for a loaded shared machine).
"""
import atexit, base64, gzip, json, os, shlex, socket, subprocess, sys, time, uuid
import boto3
n = int(os.environ.get("N", "1000000"))
raw_kib = int(os.environ.get("RAW_KIB", "1024"))
builds = sys.argv[1:]
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
moto = subprocess.Popen([f"{root}/.venv/bin/moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
atexit.register(moto.terminate)
env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="bench",
           AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true", RUST_LOG="warn,tyrell_worker::metrics=info")
for _ in range(100):
    try: socket.create_connection(("127.0.0.1", port)).close(); break
    except OSError: time.sleep(0.1)
sqs = boto3.client("sqs", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench")
s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench")
# records as tests/common records("b", n, "2026-11-23T10:00:00", 5 ms) (schema 2, serde's field order)
t0 = 1795428000.0
lines = []
for i in range(n):
    t = t0 + 0.005 * i
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{i % 1000:03d}Z"
    a = 1.0 + (i % 5); sm = [a, 2.5, 3.25]; avg = sum(sm) / 3
    sd = (sum((x - avg) ** 2 for x in sm) / 3) ** 0.5; srt = sorted(sm)
    rtt = {"min": srt[0], "avg": avg, "max": srt[2], "stddev": sd, "p50": srt[1], "p90": srt[2], "p99": srt[2],
           "jitter": (abs(sm[1] - sm[0]) + abs(sm[2] - sm[1])) / 2}
    lines.append(json.dumps({"schema": 2, "id": f"b-{i}", "ts": ts, "stack": "swarm1", "region": "eu-west-1", "agent": f"bee-{i % 7}",
                             "target": f"host{i % 13}.example.org", "status": "ok", "loss": 0.0, "rtt_ms": rtt, "error": None}, separators=(",", ":")))
bodies, cur, size = [], [], 0
for l in lines:
    if size + len(l) + 1 > raw_kib * 1024:
        bodies.append("".join(x + "\n" for x in cur)); cur, size = [], 0
    cur.append(l); size += len(l) + 1
bodies.append("".join(x + "\n" for x in cur))
msgs = [base64.b64encode(gzip.compress(b.encode(), compresslevel=1, mtime=0)).decode() for b in bodies]
raw = sum(len(b) for b in bodies)
print(f"input: {n} records, {raw/1e6:.1f} MB NDJSON (avg {raw//n} B/record), {len(msgs)} messages of ~{n//len(msgs)} records, {sum(map(len,msgs))/1e6:.1f} MB gzip+base64")
del lines, bodies
def floor(level):
    c0 = time.process_time(); part = bytearray(); out = 0
    for m in msgs:
        part += gzip.decompress(base64.b64decode(m))
        if len(part) >= 5 << 20:
            if level: out += len(gzip.compress(bytes(part), compresslevel=level))
            part = bytearray()
    if part and level: out += len(gzip.compress(bytes(part), compresslevel=level))
    return time.process_time() - c0
for k, build in enumerate(builds):
    name = f"b{k}-{uuid.uuid4().hex[:8]}"
    q = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "120"})["QueueUrl"]
    s3.create_bucket(Bucket=name)
    w = subprocess.Popen([*shlex.split(build), "--queue-url", q, "--bucket", name, "--stack", "swarm1", "--drain", "--wait-seconds", "3",
                          "--flush-seconds", "60", "--stats-seconds", "10"], env=env, stderr=open(f"/tmp/worker-drive-{k}.log", "w"))
    perf = None
    if os.environ.get("PERF"):
        perf = subprocess.Popen(["perf", "record", "-F", "1000", "--call-graph", "dwarf,16384", "-o", f"{os.environ['PERF']}.{k}", "-p", str(w.pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic(); sent = 0
    while sent < len(msgs):
        depth = int(sqs.get_queue_attributes(QueueUrl=q, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]["ApproximateNumberOfMessages"])
        if depth < 10:
            batch = msgs[sent:sent + 10]
            sqs.send_message_batch(QueueUrl=q, Entries=[{"Id": str(j), "MessageBody": b, "MessageAttributes": {"tyrell-encoding": {"DataType": "String", "StringValue": "gzip+base64"}}} for j, b in enumerate(batch)])
            sent += len(batch)
        else:
            time.sleep(0.005)
    fed = time.monotonic() - start
    _, status, ru = os.wait4(w.pid, 0)
    wall = time.monotonic() - start
    cpu = ru.ru_utime + ru.ru_stime
    if perf: perf.wait()
    # every record archived?
    count, objs, stored = 0, 0, 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for o in page.get("Contents", []):
            if o["Key"].endswith(".ndjson.gz"):
                data = s3.get_object(Bucket=name, Key=o["Key"])["Body"].read()
                stored += len(data); objs += 1
                count += gzip.decompress(data).count(b"\n")
    print(f"worker #{k} {build}: exit {os.waitstatus_to_exitcode(status)}, {cpu:.2f} CPU s = {cpu*1e6/n:.2f} CPU s per million records"
          f" (goal 1.00: {'met' if cpu*1e6/n <= 1 else 'not met'}); {n/wall:.0f} records/s over {wall:.1f} s (feed {fed:.1f} s);"
          f" {objs} objects, {count} records archived, {stored/1e6:.1f} MB stored")
    # the worker's own counters at exit (its "exit" log line): the calls it made
    exit_line = [json.loads(l) for l in open(f"/tmp/worker-drive-{k}.log") if '"exit"' in l]
    if exit_line:
        f = exit_line[-1].get("fields", {})
        print("   calls: " + ", ".join(f"{c} {f.get(c)}" for c in ("sqs_receive", "sqs_delete", "sqs_visibility", "sqs_attributes", "s3_put")) +
              f"; {f.get('messages')} messages, {(f.get('messages') or 0) / max(f.get('sqs_receive') or 1, 1):.1f} per receive")
m = n / 1e6
print(f"same run, this process (C zlib via Python): base64 + gunzip alone {floor(0)/m:.2f} CPU s per million; + gzip level 1 into 5 MiB objects {floor(1)/m:.2f}")
