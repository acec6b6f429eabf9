//! The sandbox's own accept loop, so that a handler can cut its connection
//! without an answer: each connection carries a [`ConnectionCut`] in its
//! requests' extensions, and the connection task drops the socket when a
//! handler triggers it.

use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long in-flight requests may finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Inserted into every request's extensions: cancelling it makes the
/// connection task drop the socket without writing an answer.
#[derive(Clone)]
pub(crate) struct ConnectionCut(pub(crate) CancellationToken);

pub(crate) async fn accept_loop(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tasks.spawn(serve_connection(stream, app.clone(), shutdown.clone()));
            }
            Err(e) => {
                // Usually out of file descriptors: wait for some to free up.
                tracing::warn!(error = %e, "sandbox: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, app: Router, shutdown: CancellationToken) {
    let cut = CancellationToken::new();
    let service = {
        let cut = ConnectionCut(cut.clone());
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(cut.clone());
            tower::Service::call(&mut app.clone(), request)
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "sandbox: connection ended with an error");
            }
            return;
        }
        // Returning drops the connection, and the socket, unanswered.
        () = cut.cancelled() => return,
        () = shutdown.cancelled() => {}
    }
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        _ = connection => {}
        () = cut.cancelled() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {}
    }
}
