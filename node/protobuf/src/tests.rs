use serde_json::json;

use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/testdata/kubectl-1.33-create-{name}.pb",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Wraps a prost message in the `k8s\0` envelope as Go's protobuf serializer does.
fn envelope<M: prost::Message>(api_version: &str, kind: &str, m: &M) -> Vec<u8> {
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(m.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(prost::Message::encode_to_vec(&unknown));
    out
}

#[test]
fn kubectl_create_configmap() {
    // kubectl create configmap cm --from-literal=a=b --from-file=blob=<bytes 00 01 ff>
    assert_eq!(
        decode(&fixture("configmaps")).unwrap(),
        json!({"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"cm"},
               "data":{"a":"b"},"binaryData":{"blob":"AAH/"}})
    );
}

#[test]
fn kubectl_create_secret() {
    // kubectl create secret generic s --from-literal=password=hunter2
    assert_eq!(
        decode(&fixture("secrets")).unwrap(),
        json!({"kind":"Secret","apiVersion":"v1","metadata":{"name":"s"},"data":{"password":"aHVudGVyMg=="}})
    );
}

#[test]
fn kubectl_create_namespace() {
    assert_eq!(
        decode(&fixture("namespaces")).unwrap(),
        json!({"kind":"Namespace","apiVersion":"v1","metadata":{"name":"ns1"},"spec":{},"status":{}})
    );
}

#[test]
fn kubectl_create_deployment() {
    // kubectl create deployment d --image=busybox --replicas=2 --port=80
    assert_eq!(
        decode(&fixture("deployments")).unwrap(),
        json!({"kind":"Deployment","apiVersion":"apps/v1",
            "metadata":{"name":"d","labels":{"app":"d"}},
            "spec":{"replicas":2,"selector":{"matchLabels":{"app":"d"}},
                "template":{"metadata":{"labels":{"app":"d"}},
                    "spec":{"containers":[{"name":"busybox","image":"busybox",
                        "ports":[{"containerPort":80}],"resources":{}}]}},
                "strategy":{}},
            "status":{}})
    );
}

#[test]
fn kubectl_create_job() {
    // kubectl create job j --image=busybox -- echo hi
    assert_eq!(
        decode(&fixture("jobs")).unwrap(),
        json!({"kind":"Job","apiVersion":"batch/v1","metadata":{"name":"j"},
            "spec":{"template":{"metadata":{},"spec":{
                "containers":[{"name":"j","image":"busybox","command":["echo","hi"],"resources":{}}],
                "restartPolicy":"Never"}}},
            "status":{}})
    );
}

#[test]
fn kubectl_create_service() {
    // kubectl create service clusterip svc --tcp=80:8080
    assert_eq!(
        decode(&fixture("services")).unwrap(),
        json!({"kind":"Service","apiVersion":"v1","metadata":{"name":"svc","labels":{"app":"svc"}},
            "spec":{"ports":[{"name":"80-8080","protocol":"TCP","port":80,"targetPort":8080}],
                "selector":{"app":"svc"},"type":"ClusterIP"},
            "status":{"loadBalancer":{}}})
    );
}

#[test]
fn kubectl_auth_can_i() {
    // kubectl auth can-i get pods (Go's `allowed` has no omitempty, so it stays)
    assert_eq!(
        decode(&fixture("selfsubjectaccessreviews")).unwrap(),
        json!({"kind":"SelfSubjectAccessReview","apiVersion":"authorization.k8s.io/v1","metadata":{},
            "spec":{"resourceAttributes":{"namespace":"default","verb":"get","resource":"pods"}},
            "status":{"allowed":false}})
    );
}

#[test]
fn special_types_from_prost() {
    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::api::resource::Quantity;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;

    let quantity = |s: &str| Quantity {
        string: Some(s.into()),
    };
    let d = apps::Deployment {
        metadata: Some(meta::ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            creation_timestamp: Some(meta::Time {
                seconds: Some(1_704_067_200),
                nanos: Some(0),
            }),
            ..Default::default()
        }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            revision_history_limit: Some(0),
            strategy: Some(apps::DeploymentStrategy {
                r#type: Some("RollingUpdate".into()),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(0),
                        str_val: None,
                    }),
                    max_surge: Some(IntOrString {
                        r#type: Some(1),
                        int_val: None,
                        str_val: Some("25%".into()),
                    }),
                }),
            }),
            template: Some(core::PodTemplateSpec {
                metadata: None,
                spec: Some(core::PodSpec {
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(0),
                    containers: vec![core::Container {
                        name: Some("c".into()),
                        image: Some("nginx".into()),
                        resources: Some(core::ResourceRequirements {
                            requests: [
                                ("cpu".to_string(), quantity("100m")),
                                ("memory".into(), quantity("64Mi")),
                            ]
                            .into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    volumes: vec![core::Volume {
                        name: Some("cfg".into()),
                        volume_source: Some(core::VolumeSource {
                            config_map: Some(core::ConfigMapVolumeSource {
                                local_object_reference: Some(core::LocalObjectReference {
                                    name: Some("cm".into()),
                                }),
                                default_mode: Some(0o644),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                    }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let want = json!({"kind":"Deployment","apiVersion":"apps/v1",
        "metadata":{"name":"web","namespace":"default","creationTimestamp":"2024-01-01T00:00:00Z"},
        "spec":{"replicas":0,
            "template":{"spec":{
                "volumes":[{"name":"cfg","configMap":{"name":"cm","defaultMode":420}}],
                "containers":[{"name":"c","image":"nginx",
                    "resources":{"requests":{"cpu":"100m","memory":"64Mi"}}}],
                "terminationGracePeriodSeconds":0,
                "automountServiceAccountToken":false}},
            "strategy":{"type":"RollingUpdate","rollingUpdate":{"maxUnavailable":0,"maxSurge":"25%"}},
            "revisionHistoryLimit":0}});
    let body = envelope("apps/v1", "Deployment", &d);
    let got = decode(&body).unwrap();
    assert_eq!(got, want);
    // Encoding the JSON back gives the same object.
    assert_eq!(decode(&encode(&got).unwrap()).unwrap(), want);
}

#[test]
fn micro_time_duration_and_raw_extension() {
    use k8s_pb::api::events::v1 as events;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    let e = events::Event {
        metadata: Some(meta::ObjectMeta {
            name: Some("e".into()),
            ..Default::default()
        }),
        event_time: Some(meta::MicroTime {
            seconds: Some(1_704_067_200),
            nanos: Some(123_456_000),
        }),
        reason: Some("Started".into()),
        deprecated_count: Some(3),
        ..Default::default()
    };
    assert_eq!(
        decode(&envelope("events.k8s.io/v1", "Event", &e)).unwrap(),
        json!({"kind":"Event","apiVersion":"events.k8s.io/v1","metadata":{"name":"e"},
            "eventTime":"2024-01-01T00:00:00.123456Z","reason":"Started","deprecatedCount":3})
    );

    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::apimachinery::pkg::runtime::RawExtension;
    let rev = apps::ControllerRevision {
        metadata: None,
        data: Some(RawExtension {
            raw: Some(br#"{"spec":{"x":1}}"#.to_vec()),
        }),
        revision: Some(2),
    };
    let v = decode(&envelope("apps/v1", "ControllerRevision", &rev)).unwrap();
    assert_eq!(
        v,
        json!({"kind":"ControllerRevision","apiVersion":"apps/v1","data":{"spec":{"x":1}},"revision":2})
    );
    assert_eq!(decode(&encode(&v).unwrap()).unwrap(), v);
}

#[test]
fn extra_values_and_crd_schema_round_trip() {
    let review = json!({"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{"name":"t"},
        "spec":{"token":"abc"},
        "status":{"authenticated":true,"user":{"username":"u","extra":{"scopes":["a","b"]}}}});
    assert_eq!(decode(&encode(&review).unwrap()).unwrap(), review);

    let crd = json!({"kind":"CustomResourceDefinition","apiVersion":"apiextensions.k8s.io/v1",
        "metadata":{"name":"foos.example.com"},
        "spec":{"group":"example.com","names":{"plural":"foos","kind":"Foo"},"scope":"Namespaced",
            "versions":[{"name":"v1","served":true,"storage":true,"schema":{"openAPIV3Schema":{
                "type":"object","x-kubernetes-preserve-unknown-fields":true,
                "properties":{"spec":{"type":"object","additionalProperties":{"type":"string"},
                    "properties":{"n":{"type":"integer","maximum":10,"default":3},
                                  "tags":{"type":"array","items":{"type":"string"}}}}}}}}]}});
    assert_eq!(decode(&encode(&crd).unwrap()).unwrap(), crd);
}

#[test]
fn secret_bytes_from_prost() {
    use k8s_pb::api::core::v1 as core;
    let s = core::Secret {
        data: [("k".to_string(), vec![0u8, 255, 10])].into(),
        string_data: Default::default(),
        r#type: Some("Opaque".into()),
        immutable: Some(false),
        ..Default::default()
    };
    assert_eq!(
        decode(&envelope("v1", "Secret", &s)).unwrap(),
        json!({"kind":"Secret","apiVersion":"v1","immutable":false,"data":{"k":"AP8K"},"type":"Opaque"})
    );
}

#[test]
fn encode_matches_kubectl_bytes_semantically() {
    for name in [
        "configmaps",
        "secrets",
        "namespaces",
        "deployments",
        "jobs",
        "services",
        "selfsubjectaccessreviews",
    ] {
        let v = decode(&fixture(name)).unwrap();
        assert_eq!(decode(&encode(&v).unwrap()).unwrap(), v, "{name}");
    }
}

#[test]
fn errors() {
    assert!(matches!(
        decode(b"{\"kind\":\"Pod\"}"),
        Err(Error::NotProtobuf)
    ));
    let pod = k8s_pb::api::core::v1::Pod::default();
    match decode(&envelope("example.com/v1", "Foo", &pod)) {
        Err(Error::UnknownKind { api_version, kind }) => assert_eq!(
            (api_version.as_str(), kind.as_str()),
            ("example.com/v1", "Foo")
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decode(&envelope("apps/v1", "Pod", &pod)),
        Err(Error::UnknownKind { .. })
    ));
    let mut truncated = fixture("deployments");
    truncated.truncate(100);
    assert!(matches!(decode(&truncated), Err(Error::Decode(_))));
    assert!(matches!(
        encode(&json!({"apiVersion":"v1","kind":"ConfigMap","data":[1]})),
        Err(Error::Decode(_))
    ));
    assert!(matches!(
        encode(&json!({"apiVersion":"x.io/v1","kind":"Foo"})),
        Err(Error::UnknownKind { .. })
    ));
}

#[test]
fn meta_kinds_in_any_group() {
    let opts =
        json!({"kind":"DeleteOptions","apiVersion":"policy/v1","propagationPolicy":"Background"});
    assert_eq!(decode(&encode(&opts).unwrap()).unwrap(), opts);
}

#[test]
fn value_fields_name_real_fields() {
    for e in decode::VALUE_FIELDS {
        let (msg, field) = e.rsplit_once('.').unwrap();
        let (pkg, name) = msg.rsplit_once('.').unwrap();
        let m = MESSAGES.iter().find(|m| m.package == pkg && m.name == name);
        assert!(
            m.is_some_and(|m| m.fields.iter().any(|f| f.json == field)),
            "{e}"
        );
    }
}
