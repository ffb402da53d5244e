//! The stdio transport: rmcp's, plus an answer for every request it would leave unanswered.
//!
//! rmcp ignores a line that is not JSON (a deliberate choice: no id to answer), and treats a
//! message deeper than serde_json's 128 levels as such a line, so a host that sent deeply
//! nested metadata waits for an answer that never comes; a malformed request is answered
//! without its id. Here each line is read first: what rmcp accepts goes to it unchanged; a
//! line that is not JSON gets the JSON-RPC parse error -32700, and a request that cannot be
//! read gets -32600 with its id, saying why (nesting past the limit, the message's own fault).
//! Notifications and responses are never answered, as JSON-RPC requires.

use std::sync::Arc;

use rmcp::RoleServer;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::transport::async_rw::DEFAULT_MAX_LINE_LENGTH;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, mpsc};

use s3quilt_core::request::{MAX_METADATA_DEPTH, json_text_depth};

/// Deepest message serde_json reads (its recursion limit).
const MAX_MESSAGE_DEPTH: usize = 128;

/// JSON-RPC: the message is not JSON.
const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: JSON, but not a request this server can read.
const INVALID_REQUEST: i64 = -32600;

/// What to do with one line read from the client.
#[derive(Debug)]
enum Screened {
    /// A message rmcp reads: hand it over.
    Deliver(Box<RxJsonRpcMessage<RoleServer>>),
    /// Answer this error response instead.
    Answer(Value),
    /// Nothing to do (a blank line, or a notification or response nobody can be told about).
    Skip,
}

/// The fields that say whether a message is a request and which one.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<IgnoredAny>,
}

fn error_response(id: Value, code: i64, message: String) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn screen(line: &[u8]) -> Screened {
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    if line.trim_ascii().is_empty() {
        return Screened::Skip;
    }
    let error = match serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(line) {
        Ok(message) => return Screened::Deliver(Box::new(message)),
        Err(error) => error,
    };
    // Skipping a value is iterative in serde_json: any depth is fine here.
    if let Err(not_json) = serde_json::from_slice::<IgnoredAny>(line) {
        return Screened::Answer(error_response(
            Value::Null,
            PARSE_ERROR,
            format!(
                "Parse error: the message is not JSON ({not_json}); send one JSON-RPC message per line"
            ),
        ));
    }
    let id = match serde_json::from_slice::<Envelope>(line) {
        // A request: its id, if it is one a response can carry.
        Ok(Envelope {
            id: Some(id),
            method: Some(_),
        }) if id.is_string() || id.is_number() => id,
        Ok(Envelope {
            id: Some(_),
            method: Some(_),
        }) => Value::Null,
        Ok(_) => {
            tracing::debug!("ignoring an unreadable notification or response: {error}");
            return Screened::Skip;
        }
        // Not an object: a batch or a bare value.
        Err(_) => Value::Null,
    };
    let depth = json_text_depth(line);
    let message = if depth > MAX_MESSAGE_DEPTH {
        format!(
            "Invalid request: the message nests {depth} levels deep; this server reads at most {MAX_MESSAGE_DEPTH} (package metadata may nest at most {MAX_METADATA_DEPTH} levels)"
        )
    } else {
        format!("Invalid request: {error}")
    };
    Screened::Answer(error_response(id, INVALID_REQUEST, message))
}

/// Writes one message as a line; shared by rmcp's responses and this transport's answers so
/// that lines never interleave.
async fn write_line<W: AsyncWrite + Unpin>(
    writer: &Mutex<W>,
    line: Vec<u8>,
) -> std::io::Result<()> {
    let mut writer = writer.lock().await;
    writer.write_all(&line).await?;
    writer.write_all(b"\n").await?;
    writer.flush().await
}

/// Reads lines until the client closes its end, delivering messages and answering the rest.
async fn read_lines<R, W>(
    reader: R,
    writer: Arc<Mutex<W>>,
    delivered: mpsc::Sender<RxJsonRpcMessage<RoleServer>>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = DEFAULT_MAX_LINE_LENGTH as u64 + 1;
        if (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut line)
            .await?
            == 0
        {
            return Ok(());
        }
        if line.len() > DEFAULT_MAX_LINE_LENGTH && !line.ends_with(b"\n") {
            // Drop the rest of the line without holding it.
            loop {
                line.clear();
                let read = (&mut reader)
                    .take(limit)
                    .read_until(b'\n', &mut line)
                    .await?;
                if read == 0 || line.ends_with(b"\n") {
                    break;
                }
            }
            let answer = error_response(
                Value::Null,
                INVALID_REQUEST,
                format!(
                    "Invalid request: the message is longer than {DEFAULT_MAX_LINE_LENGTH} bytes"
                ),
            );
            write_line(&writer, answer.to_string().into_bytes()).await?;
            continue;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        match screen(text) {
            Screened::Deliver(message) => {
                if delivered.send(*message).await.is_err() {
                    return Ok(());
                }
            }
            Screened::Answer(answer) => {
                tracing::info!(
                    "answered an unreadable message: {}",
                    answer["error"]["message"]
                );
                write_line(&writer, answer.to_string().into_bytes()).await?;
            }
            Screened::Skip => {}
        }
    }
}

/// The server's transport over `reader` and `writer` (stdin and stdout).
pub struct GuardedTransport<W> {
    incoming: mpsc::Receiver<RxJsonRpcMessage<RoleServer>>,
    writer: Arc<Mutex<W>>,
}

impl<W: AsyncWrite + Unpin + Send + 'static> GuardedTransport<W> {
    /// Starts reading `reader` in a task of its own.
    pub fn new<R: AsyncRead + Unpin + Send + 'static>(reader: R, writer: W) -> Self {
        let writer = Arc::new(Mutex::new(writer));
        let (delivered, incoming) = mpsc::channel(16);
        let task_writer = writer.clone();
        tokio::spawn(async move {
            if let Err(e) = read_lines(reader, task_writer, delivered).await {
                tracing::error!("reading the client's messages failed: {e}");
            }
        });
        GuardedTransport { incoming, writer }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Transport<RoleServer> for GuardedTransport<W> {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let writer = self.writer.clone();
        async move {
            let line = serde_json::to_vec(&item)?;
            write_line(&writer, line).await
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        self.incoming.recv().await
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.incoming.close();
        self.writer.lock().await.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(line: &str) -> Value {
        match screen(line.as_bytes()) {
            Screened::Answer(answer) => answer,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn readable_messages_pass_and_the_rest_is_answered() {
        let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        assert!(matches!(screen(ping.as_bytes()), Screened::Deliver(_)));
        assert!(matches!(screen(b"  "), Screened::Skip));

        let not_json = answer("hello");
        assert_eq!(not_json["error"]["code"], json!(-32700));
        assert_eq!(not_json["id"], Value::Null);

        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":"r-7","method":"tools/call","params":{{"name":"x","arguments":{{"metadata":{}1{}}}}}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        let too_deep = answer(&deep);
        assert_eq!(too_deep["id"], json!("r-7"), "{too_deep}");
        assert_eq!(too_deep["error"]["code"], json!(-32600));
        let message = too_deep["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("5003 levels") && message.contains("at most 128"),
            "{message}"
        );

        let bad_params = answer(r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":7}"#);
        assert_eq!(bad_params["id"], json!(9));
        assert_eq!(bad_params["error"]["code"], json!(-32600));

        // Notifications and responses are never answered.
        let deep_notification = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/x","params":{}{}}}"#,
            "[".repeat(500),
            "]".repeat(500)
        );
        assert!(matches!(
            screen(deep_notification.as_bytes()),
            Screened::Skip
        ));
        assert_eq!(json_text_depth(br#"{"a":"[[[\"{{","b":[{}]}"#), 3);
    }
}
