#!/usr/bin/env python3
"""Replays hostile inputs against a live `edgeshard serve` and `edgeshard worker` and prints a
table: per case what the peer answered, whether that was a clean error, a crash or a hang, and how
long /health (or the worker's port) took to answer right after.

Only loopback addresses are used, every loop is bounded in count and time, and the processes it
starts are stopped at the end.

    bench/abuse.py [--binary build/release/edgeshard] [--model ../shared/models/stories260K.gguf]

Exit status 0 when there were no crashes and no hangs.
"""
import argparse, json, os, socket, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASE_TIMEOUT = 15.0  # seconds a case may take before it counts as a hang


def start(cmd, pattern, timeout=60):
    """Starts cmd; returns (process, port) once stderr/stdout names the port."""
    log = tempfile.NamedTemporaryFile(prefix="es_abuse_", suffix=".log", delete=False)
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.time()
    while time.time() - t0 < timeout:
        text = open(log.name, errors="replace").read()
        i = text.find(pattern)
        if i >= 0:
            rest = text[i + len(pattern):]
            digits = ""
            for ch in rest:
                if not ch.isdigit():
                    break
                digits += ch
            if digits:
                return p, int(digits), log.name
        if p.poll() is not None:
            sys.exit("did not start: " + " ".join(cmd) + "\n" + text)
        time.sleep(0.1)
    p.kill()
    sys.exit("did not start in time: " + " ".join(cmd))


def connect(port, source=None, timeout=CASE_TIMEOUT):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def exchange(port, raw, timeout=CASE_TIMEOUT):
    """Sends raw bytes, reads until the peer closes; returns (status or None, body bytes)."""
    s = connect(port, timeout=timeout)
    try:
        s.sendall(raw)
    except OSError:
        pass
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        s.close()
        raise
    except OSError:
        pass
    s.close()
    status = None
    if data.startswith(b"HTTP/1."):
        try:
            status = int(data[9:12])
        except ValueError:
            pass
    return status, data


def request(method, path, body=b"", headers=""):
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def health_ms(port):
    t0 = time.time()
    try:
        status, _ = exchange(port, request("GET", "/health"), timeout=CASE_TIMEOUT)
    except OSError:
        return None
    return (time.time() - t0) * 1000 if status == 200 else None


def http_cases():
    """(name, raw request bytes, expected statuses) for the server."""
    deep = b"[" * 100000 + b"]" * 100000
    big_array = b'{"prompt":"x","temperature":[' + b",".join(b'"%d"' % i for i in range(200000)) + b"]}"
    c = [
        ("nested arrays 100k (completions)", request("POST", "/v1/completions", deep), {400}),
        ("nested objects 100k (chat)", request("POST", "/v1/chat/completions",
                                               b'{"messages":' + b"{" * 100000 + b"}" * 100000 + b"}"), {400}),
        ("200k-element array in a number field", request("POST", "/v1/completions", big_array), {400}),
        ("not JSON", request("POST", "/v1/completions", b"{prompt: hi}"), {400}),
        ("truncated JSON", request("POST", "/v1/completions", b'{"prompt": "Once upon'), {400}),
        ("JSON array body", request("POST", "/v1/completions", b"[1,2,3]"), {400}),
        ("NaN literal", request("POST", "/v1/completions", b'{"prompt":"x","temperature":NaN}'), {400}),
        ("1e400 number", request("POST", "/v1/completions", b'{"prompt":"x","temperature":1e400}'), {400}),
        ("lone surrogate escape", request("POST", "/v1/completions", b'{"prompt":"\\ud800"}'), {400}),
        ("invalid UTF-8 in prompt", request("POST", "/v1/completions",
                                            b'{"prompt":"\xff\xfe\xc0","max_tokens":2}'), {200, 400}),
        ("NUL in prompt", request("POST", "/v1/completions", b'{"prompt":"a\\u0000b","max_tokens":2}'), {200, 400}),
        ("token id out of range", request("POST", "/v1/completions", b'{"prompt":[999999999]}'), {400}),
        ("negative token id", request("POST", "/v1/completions", b'{"prompt":[-5]}'), {400}),
        ("max_tokens 1e18", request("POST", "/v1/completions", b'{"prompt":"x","max_tokens":1e18}'), {400}),
        ("max_tokens -1", request("POST", "/v1/completions", b'{"prompt":"x","max_tokens":-1}'), {400}),
        ("messages of 10k empty objects", request("POST", "/v1/chat/completions",
                                                  b'{"messages":[' + b",".join([b"{}"] * 10000) + b"]}"), {400}),
        ("role of 1 MB", request("POST", "/v1/chat/completions",
                                 b'{"messages":[{"role":"' + b"r" * 1000000 + b'","content":"x"}]}'), {400}),
        ("body over --max-body", request("POST", "/v1/completions", b'{"prompt":"' + b"a" * (5 << 20) + b'"}'), {413}),
        ("Content-Length larger than body", request("POST", "/v1/completions", b"{}").replace(
            b"Content-Length: 2", b"Content-Length: 99"), {None, 400}),
        ("negative Content-Length", request("POST", "/v1/completions", b"{}").replace(
            b"Content-Length: 2", b"Content-Length: -2"), {None, 400, 413}),
        ("huge chunk size", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                            b"Connection: close\r\n\r\nffffffffffffffff\r\nabc\r\n0\r\n\r\n", {None, 400, 413}),
        ("garbage request line", b"\x00\x01\x02 GARBAGE\r\n\r\n", {None, 400}),
        ("header of 64 KiB", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n", {None, 400, 431}),
        ("URI of 64 KiB", b"GET /" + b"a" * 65536 + b" HTTP/1.1\r\nHost: x\r\n\r\n", {None, 400, 414}),
        ("1000 headers", b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-%d: y\r\n" % i for i in range(1000)) + b"Connection: close\r\n\r\n", {None, 200, 400, 431}),
        ("path traversal", request("GET", "/../../etc/passwd"), {400, 404}),
        ("unknown method", request("BREW", "/v1/completions"), {None, 400, 404, 405}),
        ("multipart body", request("POST", "/v1/completions", b"--b\r\n\r\nx\r\n--b--",
                                   "Content-Type: multipart/form-data; boundary=b\r\n"), {400, 415}),
    ]
    return c


def run_http_case(port, name, raw, expected):
    t0 = time.time()
    try:
        status, data = exchange(port, raw)
        outcome = "clean" if status in expected else "unexpected"
        what = f"HTTP {status}" if status else ("closed" if not data else repr(data[:40]))
        if status and status >= 400 and b'"error"' not in data and status not in (400, 414, 431):
            outcome = "unexpected"
    except socket.timeout:
        outcome, what = "hang", f"no answer in {CASE_TIMEOUT:.0f} s"
    except OSError as e:
        outcome, what = "clean", f"connection {e.__class__.__name__}"
    return outcome, what, (time.time() - t0) * 1000


def count_429(socks):
    """How many of the open sockets the server answered with 429 (read without waiting)."""
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            n += s.recv(64).startswith(b"HTTP/1.1 429")
        except OSError:
            pass
    return n


def slowloris(port, n=200, source="127.0.0.2"):
    """n half-sent requests from one address; /health from another while they are open."""
    socks, refused = [], 0
    for _ in range(n):
        try:
            s = connect(port, source=source, timeout=2)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        except OSError:
            refused += 1
    time.sleep(0.3)
    worst = max((health_ms(port) or 1e9) for _ in range(5))
    refused += count_429(socks)
    for s in socks:
        s.close()
    ok = worst < 1000
    return ("clean" if ok else "hang"), f"{refused} of {n} refused (429 or closed)", worst


def trickle(port, interval=0.5, limit=30.0):
    """One header byte every `interval` s: cut off at the head deadline, not kept by each byte."""
    s = connect(port, timeout=limit)
    t0 = time.time()
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1000
    cut = False
    for b in head:
        if time.time() - t0 > limit:
            break
        try:
            s.send(bytes([b]))
            s.settimeout(interval)
            if s.recv(1) == b"":
                cut = True
                break
        except socket.timeout:
            continue
        except OSError:
            cut = True
            break
    s.close()
    took = time.time() - t0
    return ("clean" if cut else "hang"), f"cut after {took:.1f} s", took * 1000


def flood(port, n=300, source="127.0.0.3"):
    """n idle connections from one address, held open: the ones past the per-client limit get 429."""
    socks = []
    for _ in range(n):
        try:
            socks.append(connect(port, source=source, timeout=2))
        except OSError:
            pass
    time.sleep(0.5)
    got429 = count_429(socks)
    h = health_ms(port)
    for s in socks:
        s.close()
    return ("clean" if h is not None and h < 1000 else "hang"), f"{got429} of {n} got 429", h or 0


def worker_port_ms(port):
    """Time for the worker's port to accept and answer an HTTP/2 preface with a SETTINGS frame."""
    t0 = time.time()
    try:
        s = connect(port, timeout=5)
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        data = s.recv(9)
        s.close()
        return (time.time() - t0) * 1000 if len(data) == 9 and data[3] == 4 else None
    except OSError:
        return None


def worker_cases(binary, token_file, port, wproc):
    out = []

    def garbage(name, raw):
        t0 = time.time()
        try:
            s = connect(port, timeout=5)
            s.sendall(raw)
            try:
                s.recv(4096)
            except OSError:
                pass
            s.close()
        except OSError:
            pass
        alive = wproc.poll() is None
        ms = worker_port_ms(port)
        out.append((name, "crash" if not alive else ("clean" if ms is not None else "hang"),
                    "worker alive" if alive else "worker died", ms, (time.time() - t0) * 1000))

    garbage("worker: random bytes", os.urandom(65536))
    garbage("worker: HTTP/1.1 request", request("GET", "/"))
    garbage("worker: HTTP/2 preface then garbage frames",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff\xff\xff\x01\x05" + os.urandom(4096))
    # Half-open connections: the worker keeps answering others.
    socks = []
    for _ in range(200):
        try:
            socks.append(connect(port, timeout=2))
        except OSError:
            pass
    ms = worker_port_ms(port)
    out.append(("worker: 200 idle connections", "clean" if ms is not None and ms < 1000 else "hang",
                f"{len(socks)} open", ms, ms or 0))
    for s in socks:
        s.close()

    # Start-up with hostile -m values must end at once with a message.
    fifo = tempfile.mktemp(prefix="es_abuse_fifo_")
    os.mkfifo(fifo)
    for name, m in (("worker -m /dev/zero", "/dev/zero"), ("worker -m FIFO", fifo),
                    ("worker -m directory", "/tmp")):
        t0 = time.time()
        try:
            r = subprocess.run([binary, "worker", "--token-file", token_file, "-m", m, "-q"],
                               capture_output=True, text=True, timeout=CASE_TIMEOUT)
            outcome = "clean" if r.returncode not in (0,) and r.returncode < 128 else "crash"
            lines = r.stderr.strip().splitlines() or [""]
            said = next((l for l in lines if l.startswith("edgeshard")), lines[-1])
            what = f"exit {r.returncode}: " + said.strip()[:90]
        except subprocess.TimeoutExpired:
            outcome, what = "hang", f"still running after {CASE_TIMEOUT:.0f} s"
        out.append((name, outcome, what, None, (time.time() - t0) * 1000))
    os.unlink(fifo)

    # SIGTERM while the worker hashes a large -m: it must stop at once, not after the hash.
    big = tempfile.NamedTemporaryFile(prefix="es_abuse_big_", suffix=".gguf", delete=False)
    big.truncate(8 << 30)  # sparse: no disk used, reads as zeros at memory speed
    big.close()
    p = subprocess.Popen([binary, "worker", "--token-file", token_file, "-m", big.name, "-q"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    t0 = time.time()
    p.terminate()
    try:
        p.wait(CASE_TIMEOUT)
        ms = (time.time() - t0) * 1000
        out.append(("worker: SIGTERM while hashing 8 GiB -m", "clean" if ms < 1000 else "hang",
                    f"exit {p.returncode} after {ms:.0f} ms", None, ms))
    except subprocess.TimeoutExpired:
        p.kill()
        out.append(("worker: SIGTERM while hashing 8 GiB -m", "hang", "still hashing", None, CASE_TIMEOUT * 1000))
    os.unlink(big.name)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "release", "edgeshard"))
    ap.add_argument("--model", default=os.path.join(os.path.dirname(ROOT), "shared", "models", "stories260K.gguf"))
    ap.add_argument("--no-worker", action="store_true", help="only the HTTP server")
    a = ap.parse_args()

    srv, port, srv_log = start([a.binary, "serve", "-m", a.model, "--host", "127.0.0.1", "--port", "0",
                                "-c", "256", "-t", "1", "--chat-template", "chatml",
                                "--http-head-timeout", "3", "--http-body-timeout", "5"], "listening on http://127.0.0.1:")
    rows = []
    try:
        for name, raw, expected in http_cases():
            outcome, what, ms = run_http_case(port, name, raw, expected)
            if srv.poll() is not None:
                outcome, what = "crash", f"server exited ({srv.returncode})"
            rows.append((name, outcome, what, health_ms(port) if srv.poll() is None else None, ms))
            if srv.poll() is not None:
                srv, port, srv_log = start([a.binary, "serve", "-m", a.model, "--port", "0", "-c", "256",
                                            "-t", "1", "--chat-template", "chatml"],
                                           "listening on http://127.0.0.1:")
        for name, fn in (("slowloris: 200 half-sent requests, one address", slowloris),
                         ("trickle: a header byte every 0.5 s", trickle),
                         ("flood: 300 idle connections, one address", flood)):
            outcome, what, ms = fn(port)
            if srv.poll() is not None:
                outcome, what = "crash", f"server exited ({srv.returncode})"
            rows.append((name, outcome, what, health_ms(port) if srv.poll() is None else None, ms))
    finally:
        srv.terminate()
        try:
            srv.wait(30)
        except subprocess.TimeoutExpired:
            srv.kill()
            rows.append(("server SIGTERM", "hang", "did not stop in 30 s", None, 30000))

    if not a.no_worker:
        token = tempfile.NamedTemporaryFile("w", prefix="es_abuse_token_", delete=False)
        token.write("abuse-test-token-0123456789\n")
        token.close()
        w, wport, _ = start([a.binary, "worker", "--token-file", token.name, "--listen", "127.0.0.1:0", "-q"],
                            "listening on 127.0.0.1:")
        try:
            rows += worker_cases(a.binary, token.name, wport, w)
        finally:
            w.terminate()
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
            os.unlink(token.name)

    print(f"| case | outcome | answer | case ms | /health ms after |")
    print("|---|---|---|---|---|")
    for name, outcome, what, after, ms in rows:
        after_s = f"{after:.0f}" if after is not None else "-"
        print(f"| {name} | {outcome} | {what} | {ms:.0f} | {after_s} |")
    crashes = sum(r[1] == "crash" for r in rows)
    hangs = sum(r[1] == "hang" for r in rows)
    clean = sum(r[1] == "clean" for r in rows)
    unexpected = sum(r[1] == "unexpected" for r in rows)
    print(f"\ncases {len(rows)}, clean errors {clean}, unexpected answers {unexpected}, "
          f"crashes {crashes}, hangs {hangs}")
    return 0 if crashes == 0 and hangs == 0 and unexpected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
