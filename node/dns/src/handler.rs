//! The hickory-server request handler: cluster names from the current [`Zone`] snapshot,
//! everything else relayed to the upstream servers.

use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::records::Records;
use crate::upstream::Upstreams;
use crate::zone::Lookup;
use hickory_proto::op::{
    Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tracing::{debug, debug_span, Instrument};

pub struct Handler {
    pub(crate) records: Records,
    pub(crate) upstreams: Upstreams,
    pub(crate) cache: Cache,
    /// Forwarded queries in flight at most.
    pub(crate) forwards: Semaphore,
    pub(crate) metrics: Arc<Metrics>,
}

fn failed(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

impl Handler {
    async fn send<R: ResponseHandler>(
        request: &Request,
        mut response: R,
        metadata: Metadata,
        answers: &[Record],
        authorities: &[Record],
        additionals: &[Record],
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::new(&request.queries, request.edns.as_ref());
        let msg = builder.build(metadata, answers, authorities, [], additionals);
        match response.send_response(msg).await {
            Ok(info) => info,
            Err(e) => {
                debug!(error = %e, "sending the response failed");
                failed(request, ResponseCode::ServFail)
            }
        }
    }

    async fn error<R: ResponseHandler>(
        request: &Request,
        response: R,
        code: ResponseCode,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = code;
        metadata.recursion_available = true;
        Self::send(request, response, metadata, &[], &[], &[]).await
    }

    /// Resolves an out-of-zone CNAME target upstream; its answers follow the CNAME.
    async fn chase(&self, target: &Name, qtype: RecordType) -> Vec<Record> {
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(target.clone(), qtype));
        let Ok(bytes) = q.to_vec() else {
            return Vec::new();
        };
        match self
            .upstreams
            .query(&bytes)
            .await
            .ok()
            .and_then(|b| Message::from_vec(&b).ok())
        {
            Some(m) => m.answers,
            None => Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let counter = match request.protocol() {
            Protocol::Udp => &self.metrics.requests_udp,
            _ => &self.metrics.requests_tcp,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let info = self.answer(request, response).await;
        self.metrics.response(info.response_code);
        info
    }
}

impl Handler {
    async fn answer<R: ResponseHandler>(&self, request: &Request, response: R) -> ResponseInfo {
        if request.metadata.op_code != OpCode::Query
            || request.metadata.message_type != MessageType::Query
        {
            return Self::error(request, response, ResponseCode::NotImp).await;
        }
        let Some(query) = request
            .queries
            .queries()
            .first()
            .filter(|_| request.queries.len() == 1)
        else {
            return Self::error(request, response, ResponseCode::FormErr).await;
        };
        let name = Name::from(query.name().clone());
        let qtype = query.query_type();
        let span = debug_span!("dns", name = %name, qtype = %qtype, src = %request.src());
        async move {
            let zone = self.records.zone();
            match zone.lookup(&name, qtype) {
                Lookup::Answer {
                    code,
                    mut answers,
                    additionals,
                    chase,
                } => {
                    if let Some(target) = chase {
                        if matches!(qtype, RecordType::A | RecordType::AAAA) {
                            answers.extend(self.chase(&target, qtype).await);
                        }
                    }
                    let mut metadata = Metadata::response_from_request(&request.metadata);
                    metadata.authoritative = true;
                    metadata.recursion_available = true;
                    metadata.response_code = code;
                    let soa = if answers.is_empty() {
                        vec![zone.soa().clone()]
                    } else {
                        Vec::new()
                    };
                    debug!(?code, answers = answers.len(), "cluster answer");
                    Self::send(request, response, metadata, &answers, &soa, &additionals).await
                }
                Lookup::Forward => {
                    let class = query.query_class();
                    let answer = match self.cache.get(&name, qtype, class) {
                        Some(m) => {
                            self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
                            Some(m)
                        }
                        None => {
                            self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
                            self.metrics.forwards.fetch_add(1, Ordering::Relaxed);
                            // As CoreDNS's forward max_concurrent: shed load rather than pile up.
                            let Ok(_permit) = self.forwards.try_acquire() else {
                                return Self::error(request, response, ResponseCode::Refused).await;
                            };
                            match self.upstreams.query(request.as_slice()).await {
                                Ok(bytes) => Message::from_vec(&bytes).ok().inspect(|m| {
                                    self.cache.put(&name, qtype, class, m);
                                }),
                                Err(e) => {
                                    debug!(error = %e, "forwarding failed");
                                    self.metrics
                                        .forward_failures
                                        .fetch_add(1, Ordering::Relaxed);
                                    None
                                }
                            }
                        }
                    };
                    let Some(m) = answer else {
                        return Self::error(request, response, ResponseCode::ServFail).await;
                    };
                    let mut metadata = m.metadata;
                    metadata.id = request.metadata.id;
                    metadata.truncation = false;
                    metadata.recursion_available = true;
                    Self::send(
                        request,
                        response,
                        metadata,
                        &m.answers,
                        &m.authorities,
                        &m.additionals,
                    )
                    .await
                }
            }
        }
        .instrument(span)
        .await
    }
}
