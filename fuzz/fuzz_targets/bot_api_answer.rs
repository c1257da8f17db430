//! What the poller does with the Bot API's answer to `getUpdates`: any status and any body
//! (updates, an error with any `retry_after`, garbage), served by a one-shot HTTP server on
//! loopback to a real `Polling`. An update run, a retry or a stop, never a panic.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use typed_session::telegram::Update;
use typed_session::{Chain, Polling};

fuzz_target!(|input: (u8, &[u8])| {
    let (status, body) = input;
    let status = match status % 4 {
        0 => "200 OK",
        1 => "429 Too Many Requests",
        2 => "502 Bad Gateway",
        _ => "401 Unauthorized",
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let body = body.to_vec();
        // Answers the first request with the input, then stops the poller.
        let served = async move {
            if let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0_u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            }
            // Let the poller read and act on the answer before it is told to stop.
            tokio::task::yield_now().await;
        };
        let chain: Chain<Update> = Chain::new().handler(|_| Box::pin(async { Ok(()) }));
        let polling = Polling::new("123:fuzz", chain)
            .api_url(format!("http://{addr}"))
            .timeout(Duration::ZERO)
            .backoff(Duration::from_millis(1), Duration::from_millis(1));
        let _ = tokio::time::timeout(Duration::from_secs(5), polling.run(served)).await;
    });
});
