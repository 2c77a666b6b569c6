"""jrq's executor contract in Python: what the example executors beside this file share.

jrq's worker runs an executor program for each attempt of a task (the contract is in
src/worker/executor/mod.rs): the task's JSON payload on stdin, the attempt in JR_*
variables, and back from the program

  JRQ-PROGRESS: N             0 to 100
  JRQ-USAGE: {...}            model, input_tokens, output_tokens, cost_usd: each line ADDS
  JRQ-CHECKPOINT: <JSON>      the latest wins (at most 64 KiB); a retry gets it back in
                              JR_CHECKPOINT / JR_CHECKPOINT_FILE
  JRQ-RETRY-AT: <time>        with exit 76: when the refusing provider resets (RFC 3339)

on stdout, and an exit status: 0 done (the tail of stdout, minus JRQ- lines, is the
result), 75 retry, 76 the provider refused, anything else failed for good (the tail of
stderr is the error). This module holds those pieces, the reading of agents' limit
messages ("usage limit reached ... resets 3pm") and the running of an agent CLI as a child
that hears our SIGTERM, so that each executor is only its agent's translation.

Standard library only, Python 3.9 or later (zoneinfo). Nothing here runs a shell.
"""

import collections
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

try:
    from zoneinfo import ZoneInfo
except ImportError:  # Python < 3.9: time zones named in limit messages read as local time
    ZoneInfo = None

EXIT_DONE = 0
#: Retryable failure (EX_TEMPFAIL): back to pending after a backoff, while attempts remain.
EXIT_RETRY = 75
#: The provider refused (rate limit, usage limit, quota): the attempt is not charged and
#: the provider pauses fleet-wide until JRQ-RETRY-AT (or the worker's --provider-backoff).
EXIT_REFUSED = 76
#: The agent failed for good: running it again would fail the same way.
EXIT_FAILED = 1
#: The payload is not what the executor takes.
EXIT_BAD_PAYLOAD = 2

#: Largest checkpoint the worker stores.
CHECKPOINT_MAX_BYTES = 64 * 1024


# --- what the worker gives ---------------------------------------------------------------

def read_payload():
    """The task's payload (stdin) as a dict; empty input is {}. Anything else ends the
    attempt as a permanent failure: retrying the same payload cannot help."""
    text = sys.stdin.read()
    if not text.strip():
        return {}
    try:
        payload = json.loads(text)
    except ValueError as e:
        fail(EXIT_BAD_PAYLOAD, f"the payload is not JSON: {e}")
    if not isinstance(payload, dict):
        fail(EXIT_BAD_PAYLOAD, "the payload must be a JSON object")
    return payload


def task_id():
    return os.environ.get("JR_TASK_ID", "0")


def attempt():
    """This attempt's number (1 for the first)."""
    try:
        return int(os.environ.get("JR_ATTEMPT", "1"))
    except ValueError:
        return 1


def incoming_checkpoint():
    """The checkpoint an earlier attempt stored (JR_CHECKPOINT, else the file
    JR_CHECKPOINT_FILE names) when it is a JSON object, else None."""
    text = os.environ.get("JR_CHECKPOINT")
    path = os.environ.get("JR_CHECKPOINT_FILE")
    if text is None and path:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            note(f"cannot read the checkpoint file {path}: {e}; starting afresh")
            return None
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        note("the checkpoint is not JSON; starting afresh")
        return None
    return value if isinstance(value, dict) else None


def text_field(payload, name, required=False):
    """payload[name] as a non-empty string, or None when absent; a wrong type (or a
    missing required field) ends the attempt with EXIT_BAD_PAYLOAD."""
    value = payload.get(name)
    if value is None or value == "":
        if required:
            fail(EXIT_BAD_PAYLOAD, f'the payload needs "{name}" (a string)')
        return None
    if not isinstance(value, str):
        fail(EXIT_BAD_PAYLOAD, f'payload "{name}" must be a string')
    return value


def int_field(payload, name):
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail(EXIT_BAD_PAYLOAD, f'payload "{name}" must be a whole number, at least 1')
    return value


def program(env_var, default):
    """The agent program: $env_var, else `default` (looked up on PATH). A relative path is
    made absolute: the program starts in the task's directory."""
    prog = os.environ.get(env_var) or default
    return os.path.abspath(prog) if os.sep in prog else prog


def env_args(name):
    """The arguments in environment variable `name`, split the way a shell splits words
    (quotes, backslashes) -- no shell runs. A value that does not split is a configuration
    error of this worker: exit 75, so another worker may take the task."""
    try:
        return shlex.split(os.environ.get(name, ""))
    except ValueError as e:
        fail(EXIT_RETRY, f"{name} is not a valid argument list: {e}")


def state_dir():
    """jrq's state directory: $STATE_DIRECTORY (set by systemd's StateDirectory=; the first
    of several), else $XDG_STATE_HOME/jrq, else ~/.local/state/jrq."""
    sd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if sd:
        return sd
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(xdg, "jrq")


def work_dir(payload):
    """(path, own): the directory the agent works in. The payload's "cwd" when given (it
    must exist; own is False), else $JRQ_AGENT_WORKDIR/task-$JR_TASK_ID, created mode 0700
    (own is True): the same path for every attempt of the task on this machine, which is
    what lets an agent find its session again on a retry."""
    cwd = text_field(payload, "cwd")
    if cwd:
        cwd = os.path.expanduser(cwd)
        if not os.path.isdir(cwd):
            fail(EXIT_FAILED, f'payload "cwd" {cwd} is not a directory')
        return cwd, False
    root = os.environ.get("JRQ_AGENT_WORKDIR") or os.path.join(state_dir(), "work")
    path = os.path.join(root, f"task-{task_id()}")
    try:
        for d in (root, path):
            if not os.path.isdir(d):
                os.makedirs(d, mode=0o700, exist_ok=True)
                os.chmod(d, 0o700)
    except OSError as e:
        fail(EXIT_RETRY, f"cannot create the working directory {path}: {e}")
    return path, True


# --- what the worker reads -----------------------------------------------------------------

# The lines the worker reads on stdout (the executor contract).
CONTROL_PREFIXES = ("JRQ-PROGRESS:", "JRQ-USAGE:", "JRQ-CHECKPOINT:", "JRQ-RETRY-AT:")


def is_control(line):
    """Whether the worker would read this line as a control line."""
    return line.lstrip().startswith(CONTROL_PREFIXES)


def escape_control(text):
    """The agent's text with its lines that read as the worker's control lines
    (JRQ-USAGE, JRQ-CHECKPOINT, JRQ-PROGRESS, JRQ-RETRY-AT) escaped with a backslash: a
    model that prints "JRQ-USAGE: {...}" (a prompt injection, a quoted log) must not
    report cost, overwrite the checkpoint or set progress."""
    return "\n".join("\\" + l if is_control(l) else l for l in text.split("\n"))


def say(line=""):
    """A line of output (the task's log, and its result when it comes last); lines that
    look like control lines are escaped (escape_control)."""
    sys.stdout.write(escape_control(line) + "\n")
    sys.stdout.flush()


def control(line):
    """One of the executor's own control lines, as it is."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def note(message):
    """A line on stderr: the log sees it, the result does not."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def fail(status, message):
    """Ends the attempt: message on stderr (the task's error), then exit with status."""
    note(message)
    sys.exit(status)


def progress(percent):
    control(f"JRQ-PROGRESS: {max(0, min(100, int(percent)))}")


def usage(model=None, input_tokens=0, output_tokens=0, cost_usd=None):
    """A JRQ-USAGE line: what THIS attempt used since its last line (the worker adds the
    lines up); zero counts are left out, a cost of 0 is said. Nothing is printed when
    there is nothing to say."""
    line = {}
    if model:
        line["model"] = model
    if input_tokens:
        line["input_tokens"] = int(input_tokens)
    if output_tokens:
        line["output_tokens"] = int(output_tokens)
    if cost_usd is not None:
        line["cost_usd"] = round(float(cost_usd), 6)
    if set(line) - {"model"}:
        control("JRQ-USAGE: " + json.dumps(line))


def checkpoint(value):
    """A JRQ-CHECKPOINT line (the latest wins; a retry gets it back)."""
    text = json.dumps(value, separators=(",", ":"))
    if len(text.encode("utf-8")) > CHECKPOINT_MAX_BYTES:
        note(f"checkpoint not stored: over {CHECKPOINT_MAX_BYTES} bytes")
        return
    control("JRQ-CHECKPOINT: " + text)


def rfc3339(when):
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def refuse(message, reset=None):
    """Ends the attempt as refused by the provider (exit 76), with JRQ-RETRY-AT first when
    the reset time is known; without it the worker pauses the provider for its
    --provider-backoff."""
    if reset is not None:
        control(f"JRQ-RETRY-AT: {rfc3339(reset)}")
    fail(EXIT_REFUSED, message + (f" (resets {rfc3339(reset)})" if reset else ""))


def usage_delta(total, baseline):
    """What to report for an agent's running totals (a dict of counters) when an earlier
    attempt already reported `baseline` for the same session: each counter's difference,
    or its whole total when it is below its baseline (the agent started that count again
    instead of carrying it over)."""
    if not isinstance(baseline, dict):
        return dict(total)
    delta = {}
    for k, v in total.items():
        try:
            base = float(baseline.get(k) or 0)
        except (TypeError, ValueError):
            base = 0
        delta[k] = v - base if v >= base else v
    return delta


class Steps:
    """A progress estimate for agents that do not say how far they are: each step (an agent
    turn, a tool call) moves it up, more slowly as it goes; with a known limit of steps it
    is steps/limit. It stays below 100: the worker sets 100 when the task completes."""

    def __init__(self, limit=None):
        self.limit = limit
        self.count = 0
        self.shown = -1

    def step(self):
        self.count += 1
        if self.limit:
            pct = 100 * self.count / self.limit
        else:
            pct = 100 * (1 - 0.9 ** self.count)
        pct = int(min(95, max(1, pct)))
        if pct != self.shown:
            self.shown = pct
            progress(pct)


# --- reading an agent's limit and error messages ---------------------------------------

#: Messages of a provider that refuses: rate limits, usage limits, quota, billing.
REFUSED = re.compile(
    r"usage limit|hit your (?:usage )?limit|(?:5-hour|five.hour|weekly|session|daily|opus)"
    r" limit|rate.?limit|too many requests|\b(?:status|error|http|code)\W{0,3}429\b|quota|"
    r"credit balance|billing",
    re.I)
#: Messages of a failure that may pass: the network, a server error, an overload.
TRANSIENT = re.compile(
    r"overloaded|\b(?:status|error|http|code)\W{0,3}5\d\d\b|internal server error|"
    r"bad gateway|service unavailable|"
    r"gateway timeout|high demand|timed? ?out|ECONNRESET|ECONNREFUSED|ETIMEDOUT|ENOTFOUND|"
    r"EAI_AGAIN|EPIPE|socket hang up|connection (?:error|failed|reset|refused|closed)|"
    r"network|fetch failed|stream disconnected|temporarily unavailable",
    re.I)


def classify(text):
    """'refused', 'transient' or None for an agent's error message."""
    if REFUSED.search(text or ""):
        return "refused"
    if TRANSIENT.search(text or ""):
        return "transient"
    return None


_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
# "Claude AI usage limit reached|1735689600": Claude Code's form with the reset as epoch
# seconds.
_EPOCH = re.compile(r"limit reached\s*\|\s*(\d{9,12})\b", re.I)
# "resets 3pm", "resets 3:30am (Europe/Moscow)", "resets Apr 23 at 4pm (America/Recife)",
# "Your limit will reset at 5pm (Europe/Warsaw)" (Claude Code); "try again at 3:28 PM",
# "Try again at Aug 8th, 2026 12:30 PM." (Codex, local time); "resets at 15:00 UTC".
_AT = re.compile(
    r"(?:resets?|try again)\s+(?:at\s+|on\s+)?"
    r"(?:(?P<mon>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+"
    r"(?P<day>\d{1,2})(?:st|nd|rd|th)?,?\s+(?:(?P<year>\d{4})\s+)?(?:at\s+)?)?"
    r"(?:(?P<h>\d{1,2})(?::(?P<m>\d{2}))?\s*(?P<ampm>[ap])\.?m\b\.?|(?P<h24>\d{1,2}):(?P<m24>\d{2}))"
    r"(?:\s*\(?\s*(?P<tz>UTC|GMT|[A-Za-z]+/[A-Za-z0-9_+\-/]+)\s*\)?)?",
    re.I)
# "try again in 3 days 6 hours 57 minutes", "resets in 45 minutes".
_IN = re.compile(
    r"(?:resets?|try again)\s+in\s+((?:\d+\s*(?:days?|hours?|hrs?|minutes?|mins?|seconds?|secs?)"
    r"[\s,]*(?:and\s+)?)+)",
    re.I)
_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def _zone(name):
    if not name:
        return None
    if name.upper() in ("UTC", "GMT"):
        return timezone.utc
    if ZoneInfo is None:
        return None
    try:
        return ZoneInfo(name)
    except Exception:  # unknown or malformed zone name: read the time as local
        return None


def parse_reset(text, now=None):
    """The time a limit message says the limit resets, as an aware datetime, or None when
    it names none or names a time already past. A clock time without a date is its next
    occurrence; without a zone it is this machine's local time (Codex prints local time;
    Claude Code names its zone in parentheses)."""
    if not text:
        return None
    now = now or datetime.now(timezone.utc)
    m = _EPOCH.search(text)
    if m:
        when = datetime.fromtimestamp(int(m.group(1)), timezone.utc)
        return when if when > now else None
    m = _IN.search(text)
    if m:
        seconds = sum(int(n) * _UNIT[u[0].lower()]
                      for n, u in re.findall(r"(\d+)\s*([a-z]+)", m.group(1), re.I))
        return now + timedelta(seconds=seconds) if seconds else None
    m = _AT.search(text)
    if not m:
        return None
    if m.group("h24"):
        hour, minute = int(m.group("h24")), int(m.group("m24"))
    else:
        hour = int(m.group("h")) % 12 + (12 if m.group("ampm").lower() == "p" else 0)
        minute = int(m.group("m") or 0)
    if hour > 23 or minute > 59:
        return None
    zone = _zone(m.group("tz"))
    # Wall-clock arithmetic in the zone (or naive local time), converted at the end.
    wall_now = now.astimezone(zone).replace(tzinfo=None) if zone else \
        now.astimezone().replace(tzinfo=None)
    try:
        if m.group("mon"):
            month = _MONTHS.index(m.group("mon").lower()[:3]) + 1
            year = int(m.group("year") or wall_now.year)
            wall = datetime(year, month, int(m.group("day")), hour, minute)
            if not m.group("year") and wall < wall_now - timedelta(days=1):
                wall = wall.replace(year=year + 1)
        else:
            wall = wall_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
            if wall <= wall_now:
                wall += timedelta(days=1)
    except ValueError:  # a day the month does not have
        return None
    when = wall.replace(tzinfo=zone) if zone else wall.astimezone()
    return when if when > now else None


# --- running an agent CLI ------------------------------------------------------------------

class Child:
    """An agent CLI started without a shell: stdin closed (the CLIs read a piped stdin as
    more prompt), stdout read line by line by the executor, stderr passed through to ours
    as it comes (and its last lines kept for the error message). SIGTERM and SIGINT to the
    executor are passed on, so the agent can stop (and save its session) before the
    worker's SIGKILL; `stopped` then names the signal."""

    def __init__(self, argv, cwd, env_var):
        self.stopped = None
        self.stderr_tail = collections.deque(maxlen=40)
        try:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                bufsize=1)
        except FileNotFoundError:
            # This machine's configuration, not the task's: another worker may have it.
            fail(EXIT_RETRY, f"{argv[0]} not found on PATH (set {env_var})"
                 if os.sep not in argv[0] else f"{argv[0]} not found (set {env_var})")
        except PermissionError:
            fail(EXIT_RETRY, f"{argv[0]} is not executable (set {env_var})")
        self._stderr = threading.Thread(target=self._pump_stderr, daemon=True)
        self._stderr.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)

    def _forward(self, signum, _frame):
        self.stopped = signal.Signals(signum).name
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def _pump_stderr(self):
        for line in self.proc.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.strip():
                self.stderr_tail.append(line.rstrip("\n"))

    def lines(self):
        """The agent's stdout, a line at a time (without the newline), as it comes."""
        for line in self.proc.stdout:
            yield line.rstrip("\n")

    def wait(self):
        status = self.proc.wait()
        self._stderr.join(timeout=5)
        return status

    def stderr_text(self):
        return "\n".join(self.stderr_tail)


def short(text, limit=300):
    """The first line of text, at most `limit` characters."""
    text = (text or "").strip()
    first = text.split("\n", 1)[0]
    if len(first) > limit:
        return first[:limit] + "…"
    return first + (" …" if "\n" in text else "")
