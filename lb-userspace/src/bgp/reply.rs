//! BIRD's CLI protocol replies: lines `DDDD-text`, ` text` and a last `DDDD text`.

use serde::{Deserialize, Serialize};

/// True for the codes that mean BIRD took a `configure` (or one of its variants):
/// 0003 Reconfigured, 0004 Reconfiguration in progress (protocols are restarting),
/// 0005 Reconfiguration already in progress, queueing new config (the new file is already
/// parsed and applies next), 0017 removing queued config (`configure undo`),
/// 0018 Reconfiguration confirmed, 0019 Nothing to do (`configure confirm/undo`),
/// 0020 Configuration OK (`configure check`).
/// 0006 (ignored, shutting down), 0016 (access restricted) and every 8xxx/9xxx are failures.
pub fn configure_succeeded(code: u16) -> bool {
    matches!(code, 3 | 4 | 5 | 17 | 18 | 19 | 20)
}

/// One line of a reply. Continuation lines (` text`) carry the code of the line they continue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyLine {
    pub code: u16,
    pub text: String,
}

/// A complete reply to one command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BirdReply {
    /// Every line in order; the last one ended the reply.
    pub lines: Vec<ReplyLine>,
    /// Spontaneous messages (`+text`) that arrived meanwhile.
    pub spontaneous: Vec<String>,
}

impl BirdReply {
    /// The code of the line that ended the reply.
    pub fn code(&self) -> u16 {
        self.lines.last().map_or(0, |l| l.code)
    }

    /// 8xxx (run-time error) or 9xxx (parse error).
    pub fn is_error(&self) -> bool {
        self.code() >= 8000
    }

    /// The text of the lines that carry the final code (BIRD's message, for errors).
    pub fn message(&self) -> String {
        let code = self.code();
        let mut start = self.lines.len();
        while start > 0 && self.lines[start - 1].code == code {
            start -= 1;
        }
        self.lines[start..]
            .iter()
            .map(|l| l.text.trim_end())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The text of every line with `code`.
    pub fn texts(&self, code: u16) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter(move |l| l.code == code)
            .map(|l| l.text.as_str())
    }

    /// The whole reply as text, one line each.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| l.text.trim_end())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Builds replies line by line.
#[derive(Debug, Default)]
pub struct ReplyParser {
    reply: BirdReply,
}

impl ReplyParser {
    /// Whether no line of the current reply has arrived yet.
    pub fn is_empty(&self) -> bool {
        self.reply.lines.is_empty() && self.reply.spontaneous.is_empty()
    }

    /// Takes one line (without its newline). Returns the reply once its last line arrived.
    pub fn push(&mut self, line: &str) -> std::result::Result<Option<BirdReply>, String> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(text) = line.strip_prefix('+') {
            self.reply.spontaneous.push(text.to_string());
            return Ok(None);
        }
        if let Some(text) = line.strip_prefix(' ') {
            let Some(last) = self.reply.lines.last() else {
                return Err(format!(
                    "a continuation line with nothing to continue: {line:?}"
                ));
            };
            let code = last.code;
            self.reply.lines.push(ReplyLine {
                code,
                text: text.to_string(),
            });
            return Ok(None);
        }
        let b = line.as_bytes();
        if b.len() < 4 || !b[..4].iter().all(u8::is_ascii_digit) {
            return Err(format!("not a BIRD reply line: {line:?}"));
        }
        let code: u16 = line[..4].parse().expect("four digits");
        let (last, text) = match b.get(4) {
            None => (true, ""),
            Some(b' ') => (true, &line[5..]),
            Some(b'-') => (false, &line[5..]),
            Some(_) => return Err(format!("not a BIRD reply line: {line:?}")),
        };
        self.reply.lines.push(ReplyLine {
            code,
            text: text.to_string(),
        });
        Ok(last.then(|| std::mem::take(&mut self.reply)))
    }
}

#[cfg(any(test, feature = "test-bird"))]
/// Parses exactly one complete reply (tests, recorded output).
pub fn parse_reply(text: &str) -> anyhow::Result<BirdReply> {
    let mut parser = ReplyParser::default();
    let mut lines = text.lines();
    for line in lines.by_ref() {
        if let Some(reply) = parser.push(line).map_err(anyhow::Error::msg)? {
            if let Some(extra) = lines.find(|l| !l.is_empty()) {
                anyhow::bail!("text after the end of the reply: {extra:?}");
            }
            return Ok(reply);
        }
    }
    anyhow::bail!("the reply has no final line (`DDDD text`)")
}
