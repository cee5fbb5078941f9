//! A small argument reader: `--name VALUE`, `--name=VALUE`, `-x VALUE`,
//! flags, and `--` to end options. Errors say which option was wrong.

use std::ffi::OsString;

pub struct Args {
    items: Vec<OsString>,
    pos: usize,
}

pub type ArgResult<T> = Result<T, String>;

impl Args {
    pub fn new(items: Vec<OsString>) -> Args {
        Args { items, pos: 0 }
    }

    /// The next raw argument.
    pub fn next_raw(&mut self) -> Option<OsString> {
        let v = self.items.get(self.pos).cloned();
        if v.is_some() {
            self.pos += 1;
        }
        v
    }

    pub fn peek(&self) -> Option<&OsString> {
        self.items.get(self.pos)
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> Vec<OsString> {
        let r = self.items[self.pos..].to_vec();
        self.pos = self.items.len();
        r
    }

    /// If the next argument is an option, split `--name=value`.
    pub fn next_option(&mut self) -> Option<(String, Option<String>)> {
        let a = self.peek()?.to_str()?.to_string();
        if a == "--" || !a.starts_with('-') || a == "-" {
            return None;
        }
        self.pos += 1;
        match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => Some((k.to_string(), Some(v.to_string()))),
            _ => Some((a, None)),
        }
    }

    /// The value of an option: inline (`--x=v`) or the next argument.
    pub fn value(&mut self, name: &str, inline: Option<String>) -> ArgResult<String> {
        if let Some(v) = inline {
            return Ok(v);
        }
        match self.next_raw() {
            Some(v) => v
                .into_string()
                .map_err(|_| format!("{name}: value is not valid UTF-8")),
            None => Err(format!("{name} needs a value")),
        }
    }

    pub fn value_os(&mut self, name: &str, inline: Option<String>) -> ArgResult<OsString> {
        if let Some(v) = inline {
            return Ok(v.into());
        }
        self.next_raw()
            .ok_or_else(|| format!("{name} needs a value"))
    }

    pub fn number<T: std::str::FromStr>(
        &mut self,
        name: &str,
        inline: Option<String>,
    ) -> ArgResult<T> {
        let v = self.value(name, inline)?;
        v.parse::<T>()
            .map_err(|_| format!("{name}: {v:?} is not a valid number"))
    }

    /// Skip a `--` separator if it is next.
    pub fn skip_separator(&mut self) -> bool {
        if self.peek().is_some_and(|a| a == "--") {
            self.pos += 1;
            true
        } else {
            false
        }
    }
}
