r"""Synthetic system logs, with labelled anomalies, for the log walk-through
(docs/14-scoring-and-representations.md).

    python experiments/make_logs.py --out=runs/logs --train_lines=30000 --test_lines=3000

writes
  OUT/train.log         normal logs only (what the model learns from)
  OUT/test.log          normal logs of another day, with anomalies injected
  OUT/test_labels.csv   line_number,label,kind for every line of test.log
                        (label 1 = anomalous; kind says which kind, or 'normal')

A line looks like

  2026-03-14T09:26:53.117Z web-03 api[2211]: INFO rid=5f3a9c1e start GET /v1/users/4821

Normal traffic: API requests (a 'start' line, often a database query with the
same request id, a 'done' line with status and latency, sometimes another
line in between), health checks, cron jobs, ssh logins and their systemd
sessions, redis saves, queue workers, and now and then a warning or a rare
error. Injected anomalies, one kind per label:
  unknown_service  a process never seen in normal logs (a miner, a netcat...)
  out_of_order     a request's 'done' line logged before its 'start' line
  malformed        a truncated line, two lines run together, garbage bytes,
                   a missing timestamp, or a JSON record among text lines
  error_burst      6-10 lines of an error that is rare in normal logs, in a row
The logs come from the standard library's random alone; the same --seed gives
the same files.
"""

import datetime
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from smallgpt_jax.cli import app as cli  # noqa: E402
from smallgpt_jax.system.errors import UserError  # noqa: E402

WEB, DB, WORKERS = ["web-01", "web-02", "web-03", "web-04"], ["db-01", "db-02"], [
    "worker-01", "worker-02", "worker-03"]
HOSTS = WEB + DB + ["cache-01"] + WORKERS
PATHS = [("GET", "/v1/users/{n}", "users"), ("GET", "/v1/orders/{n}", "orders"),
         ("POST", "/v1/orders", "orders"), ("GET", "/v1/products?page={p}", "products"),
         ("PUT", "/v1/cart/{n}", "carts"), ("DELETE", "/v1/cart/{n}/items/{p}", "carts"),
         ("GET", "/v1/search?q={word}", None), ("POST", "/v1/login", "sessions")]
WORDS = ["shoes", "lamp", "coffee", "desk", "phone", "cable", "bag", "chair"]
RARE_ERRORS = [  # Rare in normal logs; a burst of them is an anomaly.
    lambda r: ("postgres", "ERROR", "could not write to file "
               f'"pg_wal/xlogtemp.{r.randint(100, 999)}": No space left on device'),
    lambda r: ("kernel", "ERROR", f"EXT4-fs error (device sda{r.randint(1, 3)}): ext4_find_entry:"
               f"{r.randint(1400, 1600)}: inode #{r.randint(2, 99999)}: "
               "reading directory lblock 0"),
    lambda r: ("api", "ERROR", f"rid={r.getrandbits(32):08x} connection pool exhausted "
               f"(size=20, waiting={r.randint(5, 80)})"),
]
UNKNOWN_SERVICES = [
    lambda r: ("xmrig", "INFO",
               f"new job from pool.minexmr.com:4444 diff {r.randint(10000, 99999)}"),
    lambda r: ("nc", "INFO", f"listening on [any] {r.choice([4444, 1337, 31337])} ..."),
    lambda r: ("telnetd", "INFO", f"connection from 203.0.113.{r.randint(1, 254)}"),
    lambda r: ("kworkerd", "WARN", f"loaded module from /tmp/.x{r.randint(10, 99)}/mod.so"),
]


class Log:
    """A growing list of (timestamp, host, service, level, message, kind) lines."""

    def __init__(self, rng: random.Random, day: int):
        self.r, self.lines = rng, []
        self.t = datetime.datetime(2026, 3, day, 0, 0, tzinfo=datetime.timezone.utc)
        self.pids = {}

    def tick(self, mean_s: float = 3.0) -> None:
        self.t += datetime.timedelta(seconds=self.r.expovariate(1 / mean_s))

    def pid(self, host: str, service: str) -> int:
        if service in ("kernel", "systemd"):
            return 0 if service == "kernel" else 1
        return self.pids.setdefault((host, service), self.r.randint(300, 32000))

    def add(self, host, service, level, message, kind="normal", at=None) -> None:
        self.lines.append((at or self.t, host, service, level, message, kind))
        self.t += datetime.timedelta(milliseconds=self.r.randint(1, 40))


def render(t, host, service, level, message, pid) -> str:
    stamp = t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
    who = "kernel:" if service == "kernel" else f"{service}[{pid}]:"
    return f"{stamp} {host} {who} {level} {message}"


def request(log: Log, reverse: bool = False) -> None:
    """An API request: start, maybe a query, done; reversed = done logged first."""
    r = log.r
    web, rid = r.choice(WEB), f"{r.getrandbits(32):08x}"
    method, path, table = r.choice(PATHS)
    path = path.format(n=r.randint(1, 99999), p=r.randint(1, 40), word=r.choice(WORDS))
    start = ("INFO", f"rid={rid} start {method} {path}")
    status = r.choices([200, 201, 204, 404, 401, 500], [70, 8, 6, 10, 4, 1])[0]
    if method == "POST" and status == 200:
        status = 201
    level = {401: "WARN", 500: "ERROR"}.get(status, "INFO")
    ms = int(r.lognormvariate(3, 0.8)) + 1
    error = " error=upstream timeout" if status == 500 else ""
    done = (level, f"rid={rid} done {status} {ms}ms{error}")
    if reverse:
        log.add(web, "api", *done, kind="out_of_order")
        log.add(web, "api", *start)
        return
    log.add(web, "api", *start)
    if table and r.random() < 0.85:
        log.add(r.choice(DB), "postgres", "INFO",
                f"rid={rid} query {table} rows={r.randint(0, 50)} {r.randint(1, 30)}ms")
    if r.random() < 0.15:
        background(log)
    log.add(web, "api", *done)


def background(log: Log) -> None:
    """One of the other normal events (one or two lines)."""
    r = log.r
    kind = r.choices(["health", "worker", "redis", "ssh", "warn", "rare"], [40, 35, 10, 6, 8, 1])[0]
    if kind == "health":
        log.add(r.choice(WEB), "nginx", "INFO", f"GET /health 200 {r.randint(0, 3)}ms")
    elif kind == "worker":
        job, queue = r.randint(1, 999999), r.choice(["emails", "thumbnails", "billing", "search"])
        if r.random() < 0.05:
            log.add(r.choice(WORKERS), "worker", "WARN", f"job={job} queue={queue} retry "
                    f"{r.randint(1, 3)}/3 after timeout")
        else:
            log.add(r.choice(WORKERS), "worker", "INFO", f"job={job} queue={queue} processed in "
                    f"{int(r.lognormvariate(4, 0.7))}ms")
    elif kind == "redis":
        log.add("cache-01", "redis", "INFO", f"{r.randint(1, 500)} changes in "
                f"{r.choice([60, 300])} seconds. Saving...")
        log.add("cache-01", "redis", "INFO", "Background saving terminated with success")
    elif kind == "ssh":
        host, user = r.choice(HOSTS), r.choice(["deploy", "admin", "ci"])
        log.add(host, "sshd", "INFO", f"Accepted publickey for {user} from 10.0.{r.randint(0, 9)}."
                f"{r.randint(2, 254)} port {r.randint(30000, 60999)} ssh2")
        log.add(host, "systemd", "INFO", f"Started Session {r.randint(100, 9999)} of user {user}.")
    elif kind == "warn":
        log.add(r.choice(DB), "postgres", "WARN", f"slow query on {r.choice(['orders', 'users'])} "
                f"took {r.randint(1000, 5000)}ms")
    else:  # Rare, but normal.
        log.add(r.choice(HOSTS), "kernel", "WARN", "TCP: request_sock_TCP: Possible SYN flooding "
                "on port 443. Sending cookies.")


def normal_event(log: Log, since_cron: list) -> None:
    log.tick()
    if log.t >= since_cron[0]:  # Cron jobs run every minute on a worker.
        job, host = log.r.choice(["backup", "rotate-logs", "report"]), log.r.choice(WORKERS)
        log.add(host, "cron", "INFO", f"job={job} started")
        log.add(host, "cron", "INFO", f"job={job} finished in {log.r.uniform(0.2, 9):.1f}s")
        since_cron[0] = log.t + datetime.timedelta(seconds=60)
    elif log.r.random() < 1 / 4000:  # A lone rare error: unusual, but not an anomaly here.
        service, level, message = log.r.choice(RARE_ERRORS)(log.r)
        log.add(log.r.choice(DB if service == "postgres" else WEB), service, level, message)
    elif log.r.random() < 0.6:
        request(log)
    else:
        background(log)


def anomaly(log: Log, kind: str) -> None:
    r = log.r
    log.tick()
    if kind == "unknown_service":
        log.add(r.choice(HOSTS), *r.choice(UNKNOWN_SERVICES)(r), kind=kind)
    elif kind == "out_of_order":
        request(log, reverse=True)
    elif kind == "malformed":
        background(log)  # A normal line, broken when written (see write()).
        log.lines[-1] = log.lines[-1][:5] + (kind,)
    else:  # error_burst: one rare error, 6-10 times from several hosts, milliseconds apart.
        make = r.choice(RARE_ERRORS)
        for _ in range(r.randint(6, 10)):
            service, level, message = make(r)
            log.add(r.choice(DB if service == "postgres" else WEB), service, level, message, kind)


def malform(r: random.Random, line: str, other: str) -> str:
    """A broken version of `line` (five ways)."""
    how = r.randrange(5)
    if how == 0:  # Truncated mid-line.
        return line[:r.randint(20, len(line) - 10)]
    if how == 1:  # Two lines run together (a lost newline after a cut).
        return line[:r.randint(30, len(line) - 5)] + other
    if how == 2:  # Garbage bytes in the middle.
        cut = r.randint(25, len(line) - 5)
        junk = "".join(r.choice("\x1b[0;\ufffd\u00ff\u00fe#@%~^") for _ in range(r.randint(4, 12)))
        return line[:cut] + junk + line[cut:]
    if how == 3:  # No timestamp.
        return line.split(" ", 1)[1]
    stamp, host, who, level, message = line.split(" ", 4)
    return (f'{{"ts":"{stamp}","host":"{host}","proc":"{who[:-1]}","level":"{level.lower()}",'
            f'"msg":"{message}"}}')


def write(log: Log, path: str, labels_path: str | None = None) -> None:
    rendered = [render(t, h, s, lv, m, log.pid(h, s)) for t, h, s, lv, m, _ in log.lines]
    for i, kind in enumerate(k for *_, k in log.lines):
        if kind == "malformed":
            rendered[i] = malform(log.r, rendered[i], rendered[log.r.randrange(i)])
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in rendered)
    if labels_path:
        with open(labels_path, "w", encoding="utf-8") as f:
            f.write("line_number,label,kind\n")
            for n, (*_, kind) in enumerate(log.lines, 1):
                f.write(f"{n},{int(kind != 'normal')},{kind}\n")


def generate(out: str, train_lines: int, test_lines: int, anomalies: int, seed: int) -> None:
    """Train on the first part of a day's logs; the test log is what follows."""
    os.makedirs(out, exist_ok=True)
    log = Log(random.Random(seed), day=14)
    cron = [log.t]
    for name, n in (("train", train_lines), ("test", test_lines)):
        log.lines = []
        kinds = (["unknown_service", "out_of_order", "malformed"] * anomalies
                 + ["error_burst"] * max(1, anomalies // 3)) if name == "test" else []
        # Anomalies go at random points, spread over the whole log.
        due = sorted(log.r.sample(range(1, n - 20), len(kinds)))
        log.r.shuffle(kinds)
        while len(log.lines) < n:
            if due and len(log.lines) >= due[0]:
                due.pop(0)
                anomaly(log, kinds.pop())
            else:
                normal_event(log, cron)
        log.lines = log.lines[:n]
        labels = os.path.join(out, "test_labels.csv") if name == "test" else None
        write(log, os.path.join(out, f"{name}.log"), labels)
        bad = sum(kind != "normal" for *_, kind in log.lines)
        print(f"wrote {os.path.join(out, name + '.log')} ({n} lines"
              + (f", {bad} anomalous; labels in {labels})" if labels else ")"))


def _define_flags() -> None:
    """Defined only when run as a command (tests import generate())."""
    flags.DEFINE_string("out", "runs/logs", "Folder for the .log and labels files.")
    flags.DEFINE_integer("train_lines", 30000, "Lines of normal training logs.")
    flags.DEFINE_integer("test_lines", 3000, "Lines of the test log.")
    flags.DEFINE_integer("anomalies", 10, "Injected anomalies of each single-line kind "
                         "(bursts: a third as many).")
    flags.DEFINE_integer("seed", 0, "Seed of the generator.")


def main(argv: list[str]) -> None:
    FLAGS = flags.FLAGS
    if FLAGS.test_lines < 100 or FLAGS.train_lines < 100:
        raise UserError("--train_lines and --test_lines must be at least 100.")
    generate(FLAGS.out, FLAGS.train_lines, FLAGS.test_lines, FLAGS.anomalies, FLAGS.seed)


if __name__ == "__main__":
    _define_flags()
    cli.run_app(main)
