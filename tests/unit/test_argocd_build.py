"""The wrapper module that builds Argo CD repeats upstream's replaces and pins the
module it replaces with a relative path to that module's own tag."""

from __future__ import annotations

from hybrid_compute.dev.argocd import wrapper_replaces

UPSTREAM = """module github.com/argoproj/argo-cd/v3

go 1.27.0

require github.com/argoproj/argo-cd/gitops-engine/v3 v3.6.1

replace (
	github.com/golang/protobuf => github.com/golang/protobuf v1.5.4

	// Avoid CVE-2022-3064
	gopkg.in/yaml.v2 => gopkg.in/yaml.v2 v2.4.0
	k8s.io/api => k8s.io/api v0.37.0
)

replace github.com/argoproj/argo-cd/gitops-engine/v3 => ./gitops-engine
"""


def test_relative_replace_becomes_the_published_tag_and_the_rest_are_kept() -> None:
    assert wrapper_replaces(UPSTREAM, "3.6.1") == [
        "replace github.com/golang/protobuf => github.com/golang/protobuf v1.5.4",
        "replace gopkg.in/yaml.v2 => gopkg.in/yaml.v2 v2.4.0",
        "replace k8s.io/api => k8s.io/api v0.37.0",
        "replace github.com/argoproj/argo-cd/gitops-engine/v3 => "
        "github.com/argoproj/argo-cd/gitops-engine/v3 v3.6.1",
    ]
