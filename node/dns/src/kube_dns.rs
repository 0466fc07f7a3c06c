//! The `kube-system/kube-dns` Service K3s's CoreDNS manifest creates, so clients and
//! `kubectl get svc -A` see the cluster DNS where they expect it.

use crate::Error;
use k3rs_client::{Client, Resource};
use serde_json::{json, Value};
use std::net::IpAddr;
use tracing::info;

pub fn kube_dns_service(ip: IpAddr) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "namespace": "kube-system",
            "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "CoreDNS"
            },
            "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip.to_string(),
            "clusterIPs": [ip.to_string()],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}
            ]
        }
    })
}

/// Creates the Service unless it exists (an existing one is left as the user may have changed it).
pub async fn ensure_kube_dns_service(client: &dyn Client, ip: IpAddr) -> Result<(), Error> {
    let r = Resource::core("services");
    match client.get(&r, Some("kube-system"), "kube-dns").await {
        Ok(_) => return Ok(()),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(Error::Api(e)),
    }
    match client
        .create(&r, Some("kube-system"), kube_dns_service(ip), "k3rs-dns")
        .await
    {
        Ok(_) => {
            info!(%ip, "created the kube-dns Service");
            Ok(())
        }
        Err(e) if e.is_already_exists() => Ok(()),
        Err(e) => Err(Error::Api(e)),
    }
}
