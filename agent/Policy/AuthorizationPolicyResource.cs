using System.Text.Json.Serialization;
using k8s;
using k8s.Models;

namespace Weft.Policy;

/// <summary>
/// Weft's authorization policy custom resource, <c>weft.dev/v1alpha1</c> <c>AuthorizationPolicy</c>: the fields and
/// meaning of Istio's <c>security.istio.io/v1</c> AuthorizationPolicy at L4, so an Istio policy works after changing
/// its apiVersion. Only the shape lives here; <see cref="PolicyCompiler"/> validates and compiles it.
/// </summary>
[KubernetesEntity(Group = PolicyKinds.Group, ApiVersion = PolicyKinds.Version, Kind = "AuthorizationPolicy", PluralName = "authorizationpolicies")]
internal sealed class V1Alpha1AuthorizationPolicy : IKubernetesObject<V1ObjectMeta>
{
    public const string KubeKind = "AuthorizationPolicy";

    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = PolicyKinds.ApiVersion;

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = KubeKind;

    [JsonPropertyName("metadata")]
    public V1ObjectMeta Metadata { get; set; } = new();

    [JsonPropertyName("spec")]
    public AuthorizationPolicySpec? Spec { get; set; }
}

internal sealed class AuthorizationPolicySpec
{
    /// <summary>Workloads in the policy's namespace (every namespace, for the mesh root namespace) with these labels; null: all of them.</summary>
    [JsonPropertyName("selector")]
    public WorkloadSelector? Selector { get; set; }

    /// <summary>ALLOW (the default when empty) or DENY. AUDIT has no effect on decisions; CUSTOM is not supported.</summary>
    [JsonPropertyName("action")]
    public string? Action { get; set; }

    /// <summary>Null or empty: the policy matches nothing (Istio: "If not set, the match will never occur").</summary>
    [JsonPropertyName("rules")]
    public IList<AuthorizationRule>? Rules { get; set; }

    /// <summary>Istio's gateway targeting; Weft has no gateways, so a policy that sets it applies to no workload.</summary>
    [JsonPropertyName("targetRef")]
    public object? TargetRef { get; set; }

    [JsonPropertyName("targetRefs")]
    public IList<object>? TargetRefs { get; set; }
}

internal sealed class WorkloadSelector
{
    [JsonPropertyName("matchLabels")]
    public IDictionary<string, string>? MatchLabels { get; set; }
}

/// <summary>A rule matches when one of its sources, one of its operations and every condition match; an empty rule always matches.</summary>
internal sealed class AuthorizationRule
{
    [JsonPropertyName("from")]
    public IList<RuleFrom>? From { get; set; }

    [JsonPropertyName("to")]
    public IList<RuleTo>? To { get; set; }

    /// <summary>Conditions on request attributes: HTTP-level in Istio, so not evaluated at L4 (see the compiler).</summary>
    [JsonPropertyName("when")]
    public IList<RuleCondition>? When { get; set; }
}

internal sealed class RuleFrom
{
    [JsonPropertyName("source")]
    public RuleSource? Source { get; set; }
}

/// <summary>Fields are ANDed; each list matches when any entry matches (a not-list when none does).</summary>
internal sealed class RuleSource
{
    /// <summary>Peer identities without the scheme, "cluster.local/ns/default/sa/sleep"; "*" prefix/suffix wildcards. mTLS only.</summary>
    [JsonPropertyName("principals")]
    public IList<string>? Principals { get; set; }

    [JsonPropertyName("notPrincipals")]
    public IList<string>? NotPrincipals { get; set; }

    /// <summary>The peer's namespace, taken from its certificate. mTLS only.</summary>
    [JsonPropertyName("namespaces")]
    public IList<string>? Namespaces { get; set; }

    [JsonPropertyName("notNamespaces")]
    public IList<string>? NotNamespaces { get; set; }

    /// <summary>Source addresses: a single IP or a CIDR block.</summary>
    [JsonPropertyName("ipBlocks")]
    public IList<string>? IpBlocks { get; set; }

    [JsonPropertyName("notIpBlocks")]
    public IList<string>? NotIpBlocks { get; set; }

    // Istio fields an L4 proxy cannot evaluate (JWT identities, X-Forwarded-For addresses).
    [JsonPropertyName("requestPrincipals")]
    public IList<string>? RequestPrincipals { get; set; }

    [JsonPropertyName("notRequestPrincipals")]
    public IList<string>? NotRequestPrincipals { get; set; }

    [JsonPropertyName("remoteIpBlocks")]
    public IList<string>? RemoteIpBlocks { get; set; }

    [JsonPropertyName("notRemoteIpBlocks")]
    public IList<string>? NotRemoteIpBlocks { get; set; }
}

internal sealed class RuleTo
{
    [JsonPropertyName("operation")]
    public RuleOperation? Operation { get; set; }
}

internal sealed class RuleOperation
{
    /// <summary>Destination ports as strings, as Istio writes them ("8080"); the workload's own port, not the tunnel's.</summary>
    [JsonPropertyName("ports")]
    public IList<string>? Ports { get; set; }

    [JsonPropertyName("notPorts")]
    public IList<string>? NotPorts { get; set; }

    // HTTP-only in Istio.
    [JsonPropertyName("hosts")]
    public IList<string>? Hosts { get; set; }

    [JsonPropertyName("notHosts")]
    public IList<string>? NotHosts { get; set; }

    [JsonPropertyName("methods")]
    public IList<string>? Methods { get; set; }

    [JsonPropertyName("notMethods")]
    public IList<string>? NotMethods { get; set; }

    [JsonPropertyName("paths")]
    public IList<string>? Paths { get; set; }

    [JsonPropertyName("notPaths")]
    public IList<string>? NotPaths { get; set; }
}

internal sealed class RuleCondition
{
    [JsonPropertyName("key")]
    public string? Key { get; set; }

    [JsonPropertyName("values")]
    public IList<string>? Values { get; set; }

    [JsonPropertyName("notValues")]
    public IList<string>? NotValues { get; set; }
}
