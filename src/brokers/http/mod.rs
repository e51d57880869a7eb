//! The HTTP trigger (`[http]`, `source = { http = "/orders" }`, or a
//! route's `http = "/orders"`): an API gateway in front of routes.
//!
//! One listener serves every route's path. A request becomes a delivery of
//! the route's pipeline, whose settle token waits for the outcome and
//! answers the request ([`crate::brokers::Settle::waits`]); in async mode
//! it is instead published to the route's broker source and answered 202,
//! so that it survives a crash like any queued message.
//!
//! - [`config`]: the keys;
//! - `server`: the listener, from request to response;
//! - `source`: a route's registration and its deliveries;
//! - `event`: requests as envelopes (CloudEvents, headers, auth).

pub mod config;
mod event;
mod server;
mod source;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::{HttpConfig, HttpEndpoint, KIND};

use super::{Broker, BrokerError, Kind as _, Peers, Publisher, Refusing, Source};
use crate::config::{Endpoint, RouteConfig};
use crate::message::Message;

/// The paths served, each with its route's entry.
type Table = RwLock<HashMap<String, Arc<source::Entry>>>;

/// The listener and the routes on it. It opens at the first route's
/// subscription, so that a CLI command that reads the config (`mqfn
/// invoke`) never takes the port of the `mqfn run` it talks to.
pub struct HttpBroker {
    name: String,
    cfg: HttpConfig,
    table: Arc<Table>,
    listening: tokio::sync::Mutex<Option<SocketAddr>>,
    stop: CancellationToken,
    served: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl HttpBroker {
    fn new(name: &str, cfg: HttpConfig) -> Self {
        Self {
            name: name.to_owned(),
            cfg,
            table: Arc::default(),
            listening: tokio::sync::Mutex::new(None),
            stop: CancellationToken::new(),
            served: Mutex::new(None),
        }
    }

    /// Opens the listener, once.
    async fn listen(&self) -> Result<SocketAddr, BrokerError> {
        let mut listening = self.listening.lock().await;
        if let Some(addr) = *listening {
            return Ok(addr);
        }
        let listener = tokio::net::TcpListener::bind(&self.cfg.listen)
            .await
            .map_err(|e| {
                BrokerError::setup(
                    &self.name,
                    format!(
                        "cannot listen on {}: {e}; set [http] listen to a free address",
                        self.cfg.listen
                    ),
                )
            })?;
        let addr = listener.local_addr().map_err(|e| {
            BrokerError::setup(&self.name, format!("the listener has no address: {e}"))
        })?;
        info!(addr = %addr, "HTTP trigger listening.");
        let task = tokio::spawn(server::serve(
            listener,
            self.table.clone(),
            self.cfg.max_body_bytes,
            self.stop.clone(),
        ));
        *self.served.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        *listening = Some(addr);
        Ok(addr)
    }
}

#[async_trait]
impl Broker for HttpBroker {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        KIND.name()
    }

    fn is_up(&self) -> bool {
        true
    }

    async fn source(
        &self,
        route: &RouteConfig,
        window: usize,
    ) -> Result<Box<dyn Source>, BrokerError> {
        self.subscribe(route, window, &Peers::new()).await
    }

    async fn subscribe(
        &self,
        route: &RouteConfig,
        _window: usize,
        peers: &Peers,
    ) -> Result<Box<dyn Source>, BrokerError> {
        // Its own source: synchronous only. A route's `http` key: requests
        // may also be queued on the route's broker source.
        let (at, forward) = match (route.source.broker == self.name, &route.http) {
            (true, _) => (&route.source, None),
            (false, Some(at)) => {
                let broker = peers.get(&route.source.broker).ok_or_else(|| {
                    BrokerError::setup(
                        &self.name,
                        format!("route {}: its source's broker is not connected", route.name),
                    )
                })?;
                (at, Some((broker.publisher(), route.source.clone())))
            }
            (false, None) => {
                return Err(BrokerError::setup(
                    &self.name,
                    format!("route {} has no HTTP path", route.name),
                ))
            }
        };
        let Some(ep) = at.get::<HttpEndpoint>() else {
            return Err(self.not_mine(at));
        };
        self.listen().await?;
        Ok(Box::new(source::HttpSource::register(
            &self.table,
            route,
            ep,
            forward,
        )))
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(Refusing(format!(
            "the HTTP trigger takes requests and publishes nothing: POST the payload to http://{}/PATH instead (e.g. curl --data-binary @file URL)",
            self.cfg.listen
        )))
    }

    async fn tap(&self, _at: &Endpoint) -> Result<BoxStream<'static, Message>, BrokerError> {
        Err(self.unsupported("watching"))
    }

    async fn inbox(&self) -> Result<(String, BoxStream<'static, Message>), BrokerError> {
        Err(BrokerError::unsupported(
            &self.name,
            format!(
                "an HTTP route answers its requests itself: POST the payload to http://{}/PATH (e.g. curl --data-binary @payload.json URL), or run its handler with `mqfn call HANDLER PAYLOAD`",
                self.cfg.listen
            ),
        ))
    }

    async fn close(&self) {
        self.stop.cancel();
        let task = self
            .served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}
