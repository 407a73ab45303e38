//! Repository tasks, run as `cargo xtask <task>` (an alias in `.cargo/config.toml`).
//!
//! - `cargo xtask test`: installs whatever the test suites need and is missing, then runs
//!   every suite: the Rust workspace, the benchmark harness in smoke mode, the Python example
//!   and client, the Node client and, when `.ci/platforms.sh` exists, the platform builds.
//! - `cargo xtask install`: only the installation part.
//!
//! What it installs: Debian packages (`nats-server`, `mosquitto`, `tinyproxy`, `microsocks`,
//! Node.js, npm and Chromium) with apt-get when running as root, or else it says which command
//! to run; the Python packages `msgpack`, `pytest` and `websockets` and the client in
//! `clients/python` with pip; the npm packages of `clients/node` and `tests/node` with
//! `npm ci`; `websocat` (not a Debian package) with `cargo install --locked` into cargo's bin
//! directory.
//!
//! Every step prints a `== step` header. The first step that fails ends the run, naming the
//! step, with a non-zero exit status.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::SystemTime;

/// Programs the suites run, with the Debian package that provides each.
const DEBIAN_PROGRAMS: &[(&str, &str)] = &[
    ("nats-server", "nats-server"),
    ("mosquitto", "mosquitto"),
    ("tinyproxy", "tinyproxy"),
    ("microsocks", "microsocks"),
    ("node", "nodejs"),
    ("npm", "npm"),
    ("chromium", "chromium"),
];

/// Python modules the suites import, with the pip and Debian package names.
const PYTHON_MODULES: &[(&str, &str, &str)] = &[
    ("msgpack", "msgpack", "python3-msgpack"),
    ("pytest", "pytest", "python3-pytest"),
    ("websockets", "websockets", "python3-websockets"),
];

/// Programs the suites run that `cargo install --locked` provides (crate and program share
/// the name).
const CARGO_PROGRAMS: &[&str] = &["websocat"];

/// Directories whose npm packages the suites need (each has a package-lock.json).
const NPM_DIRS: &[&str] = &["clients/node", "tests/node"];

/// How long apt-get waits for another apt-get to release the package database, in seconds.
const APT_LOCK_TIMEOUT_SECS: u32 = 600;

/// Why a run stopped.
#[derive(Debug)]
enum Failure {
    /// A step's command failed or could not be started.
    Step {
        /// The step's name, as in its `==` header.
        step: String,
        /// What happened.
        detail: String,
    },
    /// Something must be installed by hand first.
    Missing(String),
    /// The command line was not understood.
    Usage(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Step { step, detail } => write!(f, "step `{step}` failed: {detail}"),
            Failure::Missing(what) => write!(f, "{what}"),
            Failure::Usage(what) => write!(f, "{what}\n\n{USAGE}"),
        }
    }
}

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  test      install what the tests need, then run every test suite
  install   only install what the tests need";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["test"] => Repo::locate().and_then(|r| {
            r.install()?;
            r.test()
        }),
        ["install"] => Repo::locate().and_then(|r| r.install()),
        ["help"] | ["--help"] | ["-h"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(Failure::Usage(format!("unknown arguments: {args:?}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The repository and where cargo puts its binaries.
struct Repo {
    /// The workspace root.
    root: PathBuf,
    /// `target/debug` (or `$CARGO_TARGET_DIR/debug`): where this program and `wsmuxd` live.
    bin_dir: PathBuf,
    /// The cargo that runs us.
    cargo: PathBuf,
}

impl Repo {
    fn locate() -> Result<Repo, Failure> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| Failure::Missing("xtask is not inside the workspace".into()))?;
        // `cargo run` built this program in the same target directory and profile as the
        // `cargo test --workspace` below builds `wsmuxd`.
        let bin_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| root.join("target").join("debug"));
        let cargo = std::env::var_os("CARGO").map_or_else(|| "cargo".into(), PathBuf::from);
        Ok(Repo {
            root,
            bin_dir,
            cargo,
        })
    }

    /// Installs what is missing.
    fn install(&self) -> Result<(), Failure> {
        header("install: system packages");
        self.install_debian_packages()?;
        header("install: python packages");
        self.install_python_packages()?;
        header("install: npm packages");
        for dir in NPM_DIRS {
            self.npm_ci(dir)?;
        }
        header("install: cargo programs");
        self.install_cargo_programs()
    }

    /// `cargo install --locked` of the missing [`CARGO_PROGRAMS`], built in a temporary
    /// directory (not the workspace's target directory).
    fn install_cargo_programs(&self) -> Result<(), Failure> {
        let missing: Vec<&str> = CARGO_PROGRAMS
            .iter()
            .copied()
            .filter(|p| find_program(p).is_none() && !cargo_bin_dir().join(p).is_file())
            .collect();
        if missing.is_empty() {
            println!("nothing missing: {}", CARGO_PROGRAMS.join(", "));
            return Ok(());
        }
        let mut args = vec!["install", "--locked", "--quiet"];
        args.extend(&missing);
        println!("installing with cargo install: {}", missing.join(" "));
        Step::new("install: cargo programs", &self.cargo, &args)
            .unset("CARGO_TARGET_DIR")
            .run(&self.root)
    }

    /// Runs every suite, in order, stopping at the first failure.
    fn test(&self) -> Result<(), Failure> {
        let daemon = self
            .bin_dir
            .join(format!("wsmuxd{}", std::env::consts::EXE_SUFFIX));
        let daemon_env = [(
            "WSMUX_DAEMON_BIN",
            std::env::var_os("WSMUX_DAEMON_BIN").unwrap_or_else(|| daemon.into_os_string()),
        )];
        let mut steps = vec![
            Step::new(
                "cargo test --workspace",
                &self.cargo,
                &["test", "--workspace"],
            ),
            Step::new(
                "benchmark harness, smoke mode",
                &self.cargo,
                &["run", "-q", "-p", "wsmux-bench", "--", "--smoke"],
            ),
            Step::new(
                "python example tests (examples/python)",
                "python3",
                &["-m", "pytest", "-q", "examples/python"],
            ),
            // The client suites run the `wsmuxd` that `cargo test --workspace` built.
            Step::new(
                "python client tests (clients/python)",
                "python3",
                &["-m", "pytest", "-q", "clients/python/tests"],
            )
            .env(&daemon_env),
            Step::new("node client tests (clients/node)", "node", &["--test"])
                .dir("clients/node")
                .env(&daemon_env),
        ];
        if self.root.join(".ci/platforms.sh").is_file() {
            steps.push(Step::new(
                "platform builds (.ci/platforms.sh)",
                "bash",
                &[".ci/platforms.sh"],
            ));
        }
        let count = steps.len();
        for step in steps {
            header(&step.name);
            step.run(&self.root)?;
        }
        println!("== all {count} steps passed");
        Ok(())
    }

    /// Installs the Debian packages of missing programs: with apt-get as root, else tells
    /// the user the command.
    fn install_debian_packages(&self) -> Result<(), Failure> {
        let missing: Vec<&str> = DEBIAN_PROGRAMS
            .iter()
            .filter(|(program, _)| find_program(program).is_none())
            .map(|&(_, package)| package)
            .collect();
        if missing.is_empty() {
            println!("nothing missing: {}", program_list());
            return Ok(());
        }
        self.apt_install(&missing, "system packages")
    }

    /// `apt-get install` of `packages` as root, or the error telling what to run.
    fn apt_install(&self, packages: &[&str], what: &str) -> Result<(), Failure> {
        let list = packages.join(" ");
        if find_program("apt-get").is_none() {
            return Err(Failure::Missing(format!(
                "missing {what}: install {list} with your system's package manager, then run \
                 `cargo xtask test` again"
            )));
        }
        if !is_root() {
            return Err(Failure::Missing(format!(
                "missing {what}: run `sudo apt-get install -y {list}`, then `cargo xtask test` \
                 again"
            )));
        }
        println!("installing with apt-get: {list}");
        let lock = format!("DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_SECS}");
        let step = "install: system packages";
        Step::new(step, "apt-get", &["-q", "-o", &lock, "update"])
            .env(&[("DEBIAN_FRONTEND", "noninteractive".into())])
            .run(&self.root)?;
        let mut args = vec![
            "-q",
            "-o",
            &lock,
            "install",
            "-y",
            "--no-install-recommends",
        ];
        args.extend(packages);
        Step::new(step, "apt-get", &args)
            .env(&[("DEBIAN_FRONTEND", "noninteractive".into())])
            .run(&self.root)
    }

    /// pip-installs the missing Python modules (or, where pip may not install into the
    /// system's Python, their Debian packages), then the client in `clients/python`.
    fn install_python_packages(&self) -> Result<(), Failure> {
        let step = "install: python packages";
        if find_program("python3").is_none() {
            self.apt_install(&["python3", "python3-pip"], "Python")?;
        }
        let missing: Vec<_> = PYTHON_MODULES
            .iter()
            .filter(|(module, _, _)| !python_has(module))
            .collect();
        if !missing.is_empty() {
            let mut args = vec![
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
            ];
            let names: Vec<&str> = missing.iter().map(|(_, pip, _)| *pip).collect();
            println!("installing with pip: {}", names.join(" "));
            args.extend(&names);
            if let Err(pip_failed) = Step::new(step, "python3", &args).run(&self.root) {
                // A Debian-managed Python refuses pip installs (PEP 668): use its packages.
                let debs: Vec<&str> = missing.iter().map(|(_, _, deb)| *deb).collect();
                eprintln!("xtask: {pip_failed}; trying the Debian packages instead");
                self.apt_install(&debs, "Python packages")?;
            }
        }
        println!("installing with pip: ./clients/python");
        Step::new(
            step,
            "python3",
            &[
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
                "./clients/python",
            ],
        )
        .run(&self.root)
    }

    /// `npm ci` in `dir`, unless its `node_modules` is already installed from the current
    /// lockfile.
    fn npm_ci(&self, dir: &str) -> Result<(), Failure> {
        let lock = self.root.join(dir).join("package-lock.json");
        let installed = self.root.join(dir).join("node_modules/.package-lock.json");
        if modified(&installed).is_some() && modified(&installed) >= modified(&lock) {
            println!("{dir}: node_modules is up to date with package-lock.json");
            return Ok(());
        }
        Step::new(
            &format!("install: npm packages ({dir})"),
            "npm",
            &["ci", "--no-audit", "--no-fund"],
        )
        .dir(dir)
        .run(&self.root)
    }
}

/// One command of the run.
struct Step {
    /// Its name in the `==` header and in a failure.
    name: String,
    /// What runs.
    program: PathBuf,
    /// Its arguments.
    args: Vec<String>,
    /// Its working directory, relative to the repository root.
    dir: Option<String>,
    /// Extra environment.
    env: Vec<(String, std::ffi::OsString)>,
    /// Variables removed from the environment.
    unset: Vec<String>,
}

impl Step {
    fn new(name: &str, program: impl AsRef<OsStr>, args: &[&str]) -> Step {
        Step {
            name: name.into(),
            program: PathBuf::from(program.as_ref()),
            args: args.iter().map(|s| s.to_string()).collect(),
            dir: None,
            env: Vec::new(),
            unset: Vec::new(),
        }
    }

    fn unset(mut self, var: &str) -> Step {
        self.unset.push(var.into());
        self
    }

    fn dir(mut self, dir: &str) -> Step {
        self.dir = Some(dir.into());
        self
    }

    fn env(mut self, vars: &[(&str, std::ffi::OsString)]) -> Step {
        self.env
            .extend(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
        self
    }

    /// Runs the command with inherited stdin/stdout/stderr; fails naming the step.
    fn run(&self, root: &Path) -> Result<(), Failure> {
        let dir = match &self.dir {
            Some(d) => root.join(d),
            None => root.to_path_buf(),
        };
        let shown = format!("{} {}", self.program.display(), self.args.join(" "));
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .current_dir(&dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        for var in &self.unset {
            command.env_remove(var);
        }
        let status = command.status().map_err(|e| Failure::Step {
            step: self.name.clone(),
            detail: format!("cannot run `{shown}`: {e}"),
        })?;
        if status.success() {
            Ok(())
        } else {
            Err(Failure::Step {
                step: self.name.clone(),
                detail: format!("`{shown}` exited with {status}"),
            })
        }
    }
}

fn header(name: &str) {
    println!("== {name}");
}

/// `program` in `PATH` or the sbin directories (Debian installs servers in `/usr/sbin`).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let sbin = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(sbin)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Where `cargo install` puts programs: `$CARGO_HOME/bin`, else `~/.cargo/bin`.
fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
        .join("bin")
}

/// The programs checked, for the "nothing missing" line.
fn program_list() -> String {
    DEBIAN_PROGRAMS
        .iter()
        .map(|(p, _)| *p)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `python3` can import `module`.
fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether we run as root (so apt-get can install).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.trim_ascii() == b"0")
}

/// A file's modification time, if it exists.
fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's "Try it" block: its commands, in order.
    fn try_it_commands(readme: &str) -> Vec<String> {
        let section = readme
            .split("## Try it")
            .nth(1)
            .and_then(|s| s.split("```sh").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("a sh block under ## Try it");
        section
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect()
    }

    #[test]
    fn readme_try_it_has_the_demo_and_this_runner_and_ci_runs_it() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        assert_eq!(
            try_it_commands(&readme),
            ["cargo run -p wsmuxd -- --demo", "cargo xtask test"]
        );
        let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
        assert!(
            ci.lines().any(|l| l.trim() == "cargo xtask test"),
            ".ci/run runs the README's test command:\n{ci}"
        );
        let alias = std::fs::read_to_string(root.join(".cargo/config.toml")).unwrap();
        assert!(alias.contains(r#"xtask = "run -q -p xtask --""#), "{alias}");
    }
}
