//! The systemd units in `systemd/`, checked with `systemd-analyze verify` as they are
//! installed: user units in `~/.config/systemd/user`, binaries in `~/.local/bin`.

use std::path::{Path, PathBuf};
use std::process::Command;

const BINARIES: [(&str, &str); 6] = [
    ("jrq", env!("CARGO_BIN_EXE_jrq")),
    ("jr-queue-worker", env!("CARGO_BIN_EXE_jr-queue-worker")),
    ("jr-auto-assigner", env!("CARGO_BIN_EXE_jr-auto-assigner")),
    ("jr-health-monitor", env!("CARGO_BIN_EXE_jr-health-monitor")),
    ("jr-stale-cleanup", env!("CARGO_BIN_EXE_jr-stale-cleanup")),
    ("jr-web", env!("CARGO_BIN_EXE_jr-web")),
];

/// A home directory with the units and binaries installed, and a runtime directory.
struct Home {
    home: tempfile::TempDir,
    runtime: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let home = tempfile::tempdir().unwrap();
        let runtime = tempfile::tempdir().unwrap();
        let bin = home.path().join(".local/bin");
        let units = home.path().join(".config/systemd/user");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&units).unwrap();
        std::fs::create_dir_all(home.path().join(".config/jrq")).unwrap();
        std::fs::write(home.path().join(".config/jrq/jrq.env"), "").unwrap();
        for (name, path) in BINARIES {
            std::os::unix::fs::symlink(path, bin.join(name)).unwrap();
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), units.join(e.file_name())).unwrap();
        }
        // The man pages, where the installer puts them (man finds them through PATH's
        // ~/.local/bin: ../share/man); the units' Documentation= names them.
        let man = home.path().join(".local/share/man/man1");
        let out = Command::new(env!("CARGO_BIN_EXE_jrq"))
            .args(["man", "--dir"])
            .arg(&man)
            .output()
            .unwrap();
        assert!(out.status.success(), "jrq man: {out:?}");
        Home { home, runtime }
    }

    /// PATH with the installed binaries first.
    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.home.path().join(".local/bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn units(&self) -> PathBuf {
        self.home.path().join(".config/systemd/user")
    }

    /// `systemd-analyze --user verify UNIT`: its combined output.
    fn verify(&self, unit: &str) -> (bool, String) {
        let out = Command::new("systemd-analyze")
            .args(["--user", "verify", unit])
            .current_dir(self.units())
            .env("HOME", self.home.path())
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env("XDG_CONFIG_HOME", self.home.path().join(".config"))
            .env("PATH", self.path())
            .output()
            .expect("systemd-analyze (install systemd)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

#[test]
fn every_unit_verifies_without_a_word() {
    let h = Home::new();
    for unit in [
        "jr-queue-worker@it_triad_jr.service",
        "jr-auto-assigner.service",
        "jr-health-monitor.service",
        "jr-health-monitor.timer",
        "jr-stale-cleanup.service",
        "jr-stale-cleanup.timer",
        "jr-alert@jr-health-monitor.service.service",
        "jr-web.service",
    ] {
        let (ok, text) = h.verify(unit);
        assert!(ok && text.is_empty(), "{unit}:\n{text}");
    }
}

#[test]
fn the_verification_does_speak_up() {
    // Without this, an environment where verify prints nothing at all would pass anything.
    let h = Home::new();
    let good = std::fs::read_to_string(h.units().join("jr-auto-assigner.service")).unwrap();
    std::fs::write(
        h.units().join("bad-key.service"),
        good.replace("Type=notify", "Type=notify\nNoSuchSetting=1"),
    )
    .unwrap();
    std::fs::write(
        h.units().join("bad-binary.service"),
        good.replace("/jr-auto-assigner\n", "/jr-no-such-binary\n"),
    )
    .unwrap();
    for unit in ["bad-key.service", "bad-binary.service"] {
        let (_, text) = h.verify(unit);
        assert!(!text.is_empty(), "{unit} passed verification");
    }
}

#[test]
fn the_worker_unit_keeps_what_the_worker_promises() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/jr-queue-worker@.service"),
    )
    .unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing"))
            .to_string()
    };
    let secs = |v: String| {
        jrq::validate::parse_duration(&format!("{v}s"))
            .unwrap()
            .as_secs()
    };
    // The drain (plus the kill grace) fits in the stop timeout.
    let drain = jrq::worker::DEFAULT_DRAIN_TIMEOUT + jrq::worker::DEFAULT_KILL_GRACE;
    assert!(drain.as_secs() < secs(value("TimeoutStopSec")));
    // The heartbeat pings the watchdog at least twice per period.
    assert!(jrq::worker::DEFAULT_HEARTBEAT_INTERVAL.as_secs() * 2 <= secs(value("WatchdogSec")));
    // A worker that is done exits 0, and is not restarted; crashes are.
    assert_eq!(value("Restart"), "always");
    assert_eq!(value("RestartPreventExitStatus"), "0");
    assert_eq!(value("Type"), "notify");
    assert!(value("EnvironmentFile").contains(".config/jrq/jrq.env"));
    assert!(!unit.contains("User="), "User= is invalid in user units");
    assert!(
        !unit.contains("DATABASE_URL="),
        "no database address in the unit"
    );
}

/// `systemd-analyze security --offline=true`'s overall exposure of a unit (0 safest, 10
/// least safe), as installed.
fn exposure(h: &Home, unit: &str) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--user", unit])
        .current_dir(h.units())
        .env("HOME", h.home.path())
        .env("XDG_RUNTIME_DIR", h.runtime.path())
        .env("XDG_CONFIG_HOME", h.home.path().join(".config"))
        .output()
        .expect("systemd-analyze (install systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure level for {unit}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    line.split(": ")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {line:?}"))
}

#[test]
fn the_units_are_hardened() {
    let h = Home::new();
    for (unit, most) in [
        ("jr-auto-assigner.service", 4.0),
        ("jr-health-monitor.service", 4.0),
        ("jr-stale-cleanup.service", 4.0),
        ("jr-web.service", 4.0),
        ("jr-alert@x.service", 4.0),
        // Executors run in it and keep what they need: home, devices, JITs, syscalls.
        ("jr-queue-worker@x.service", 6.0),
    ] {
        let e = exposure(&h, unit);
        assert!(e <= most, "{unit}: exposure {e}, at most {most} expected");
    }
    // The measure does tell: a unit without hardening scores far higher.
    let bare = std::fs::read_to_string(h.units().join("jr-auto-assigner.service"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('[') || l.starts_with("ExecStart=") || l.starts_with("Type="))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(h.units().join("bare.service"), bare).unwrap();
    assert!(exposure(&h, "bare.service") > 9.0);
}

#[test]
fn the_man_pages_and_completions_come_from_the_options() {
    let h = Home::new();
    let man = h.home.path().join(".local/share/man/man1");
    for page in ["jrq.1", "jrq-enqueue.1", "jr-queue-worker.1", "jr-web.1"] {
        let text = std::fs::read_to_string(man.join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let worker = std::fs::read_to_string(man.join("jr-queue-worker.1")).unwrap();
    assert!(worker.contains("capacity") && worker.contains("JRQ_WORKER_CAPACITY"));
    // man itself finds them (as systemd-analyze does for Documentation=).
    let out = Command::new("man")
        .args(["-w", "jr-queue-worker"])
        .env("HOME", h.home.path())
        .env("PATH", h.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_jrq"))
            .args(["completions", shell, "--program", "jr-queue-worker"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("capacity"),
            "{shell}: {text}"
        );
    }
}
