//! `shell`: commands read from standard input, one per line, on one connection.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use coord::Client;
use tokio::io::AsyncBufReadExt;
use tokio::task::JoinHandle;

use crate::args::{self, Cmd, Line};
use crate::context::Ctx;
use crate::output::{emit, note, report, Failure, Outcome, OK, OTHER, USAGE};

/// `shell [--echo]`: exits with the code of the last command that failed, 0 if none did.
pub(crate) async fn shell(ctx: &Ctx, client: &Client, echo: bool) -> Outcome {
    let mut sh = Shell {
        ctx: Ctx {
            in_shell: true,
            ..ctx.clone()
        },
        client,
        echo,
        last_failure: OK,
        background: Vec::new(),
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "coordctl shell: one command per line (`help` lists them; Ctrl-D or `exit` leaves)"
        );
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        if interactive {
            eprint!("coord> ");
        }
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                let f = Failure::new(OTHER, format!("cannot read standard input: {e}"));
                report(&sh.ctx, &f);
                sh.last_failure = OTHER;
                break;
            }
        };
        if !sh.line(&line).await {
            break;
        }
    }
    sh.stop_background();
    Ok(sh.last_failure)
}

/// The state of one shell.
struct Shell<'a> {
    ctx: Ctx,
    client: &'a Client,
    /// `--echo`: print each command before its output.
    echo: bool,
    /// The exit code of the last command that failed (OK if none did).
    last_failure: i32,
    /// The commands started with `&` and not yet waited for.
    background: Vec<JoinHandle<i32>>,
}

impl Shell<'_> {
    /// Handles one line; false once the shell should end (`exit`, `quit`).
    async fn line(&mut self, line: &str) -> bool {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return true;
        }
        if self.echo {
            emit(&format!("coord> {trimmed}"));
        }
        let (trimmed, in_background) = match trimmed.strip_suffix('&') {
            Some(t) => (t.trim_end(), true),
            None => (trimmed, false),
        };
        match trimmed {
            "exit" | "quit" => return false,
            "wait" => {
                self.wait_background().await;
                return true;
            }
            _ => {}
        }
        let Some(cmd) = self.parse(trimmed) else {
            return true;
        };
        if in_background {
            self.run_background(cmd).await;
        } else {
            self.run_foreground(cmd).await;
        }
        true
    }

    /// Remembers a command's exit code if it failed.
    fn record(&mut self, code: i32) {
        if code != OK {
            self.last_failure = code;
        }
    }

    /// The command on a line; a bad line is reported (exit 2 remembered), help is printed.
    fn parse(&mut self, line: &str) -> Option<Cmd> {
        let words = match split_words(line) {
            Ok(w) => w,
            Err(e) => {
                report(&self.ctx, &Failure::new(USAGE, e));
                self.last_failure = USAGE;
                return None;
            }
        };
        match Line::try_parse_from(&words) {
            Ok(l) => Some(l.command),
            Err(e) if args::is_help(&e) => {
                emit(e.render().to_string().trim_end());
                None
            }
            Err(e) => {
                report(&self.ctx, &Failure::new(USAGE, args::clap_line(&e)));
                self.last_failure = USAGE;
                None
            }
        }
    }

    /// Runs a command and waits for it.
    async fn run_foreground(&mut self, cmd: Cmd) {
        match super::run(&self.ctx, self.client, cmd).await {
            Ok(code) => self.record(code),
            Err(f) => {
                report(&self.ctx, &f);
                self.last_failure = f.code;
            }
        }
    }

    /// Runs a command as a task, and goes on once it is under way (or done, or after a
    /// second): the next line may rely on its watch, leadership or lock.
    async fn run_background(&mut self, cmd: Cmd) {
        let notify = Arc::new(tokio::sync::Notify::new());
        let bctx = Ctx {
            ready: Some(notify.clone()),
            ..self.ctx.clone()
        };
        let client = self.client.clone();
        let mut handle = tokio::spawn(async move {
            match super::run(&bctx, &client, cmd).await {
                Ok(code) => code,
                Err(f) => {
                    report(&bctx, &f);
                    f.code
                }
            }
        });
        tokio::select! {
            r = &mut handle => self.record(r.unwrap_or(OTHER)),
            _ = notify.notified() => self.background.push(handle),
            _ = tokio::time::sleep(Duration::from_secs(1)) => self.background.push(handle),
        }
    }

    /// `wait`: waits for every background command.
    async fn wait_background(&mut self) {
        for h in std::mem::take(&mut self.background) {
            self.record(h.await.unwrap_or(OTHER));
        }
    }

    /// Leaving the shell stops what still runs in the background.
    fn stop_background(&self) {
        if !self.background.is_empty() {
            note(
                &self.ctx,
                &format!("stopping {} background command(s)", self.background.len()),
            );
            for h in &self.background {
                h.abort();
            }
        }
    }
}

/// Splits a shell line into words: whitespace separates; '…' and "…" quote; \ escapes.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some('"') if c == '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            Some(_) => cur.push(c),
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    in_word = true;
                }
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                        in_word = true;
                    }
                }
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                }
                c => {
                    cur.push(c);
                    in_word = true;
                }
            },
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".to_owned());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}
