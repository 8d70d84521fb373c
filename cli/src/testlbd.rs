//! Test only: what lbctl's unit tests need to run commands against an in-process fake of lbd
//! (its services are the servers generated in xdplb-proto): serving a fake on a Unix socket and
//! the global options that point lbctl at it.

use std::{path::Path, time::Duration};

use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;

use crate::highargs::{Globals, Target};

/// Serves `routes` (e.g. `Routes::new(VipsServer::new(fake))`) on a Unix socket at `path`
/// until the test's runtime ends.
pub(crate) fn serve(path: &Path, routes: Routes) {
    let listener = tokio::net::UnixListener::bind(path).expect("bind test socket");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
}

/// The global options of an lbctl talking to the fake at `socket`.
pub(crate) fn globals(socket: &Path, json: bool) -> Globals {
    Globals {
        target: Target::Unix(socket.to_path_buf()),
        json,
        timeout: Duration::from_secs(5),
    }
}
