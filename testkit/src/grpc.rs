//! gRPC to an lbd (or an in-process API server) on its Unix socket, for the tests and the
//! bench (feature `grpc`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// A channel to the gRPC server listening on the Unix socket `socket`.
pub async fn unix_channel(socket: &Path) -> Result<Channel> {
    let path = socket.to_path_buf();
    // The URI is a placeholder: the connector dials the socket.
    Endpoint::from_static("http://[::]:50051")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .with_context(|| format!("connecting to the gRPC socket {}", socket.display()))
}
