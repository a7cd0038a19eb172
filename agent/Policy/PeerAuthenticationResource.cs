using System.Text.Json.Serialization;
using k8s;
using k8s.Models;

namespace Weft.Policy;

/// <summary>
/// Weft's <c>weft.dev/v1alpha1</c> <c>PeerAuthentication</c>: Istio's resource of the same name, reduced to what an
/// L4 node proxy decides with it, whether a workload accepts plaintext inbound (PERMISSIVE) or only mTLS (STRICT).
/// </summary>
[KubernetesEntity(Group = PolicyKinds.Group, ApiVersion = PolicyKinds.Version, Kind = "PeerAuthentication", PluralName = "peerauthentications")]
internal sealed class V1Alpha1PeerAuthentication : IKubernetesObject<V1ObjectMeta>
{
    public const string KubeKind = "PeerAuthentication";

    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = PolicyKinds.ApiVersion;

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = KubeKind;

    [JsonPropertyName("metadata")]
    public V1ObjectMeta Metadata { get; set; } = new();

    [JsonPropertyName("spec")]
    public PeerAuthenticationSpec? Spec { get; set; }
}

internal sealed class PeerAuthenticationSpec
{
    /// <summary>Workloads in the policy's namespace (every namespace, for the mesh root namespace) with these labels; null: the whole namespace.</summary>
    [JsonPropertyName("selector")]
    public WorkloadSelector? Selector { get; set; }

    [JsonPropertyName("mtls")]
    public PeerMutualTls? Mtls { get; set; }

    /// <summary>Istio's per-port override; not supported (ignored with a warning).</summary>
    [JsonPropertyName("portLevelMtls")]
    public IDictionary<string, PeerMutualTls>? PortLevelMtls { get; set; }
}

internal sealed class PeerMutualTls
{
    /// <summary>UNSET (inherit; the default), PERMISSIVE, STRICT; DISABLE is read as PERMISSIVE.</summary>
    [JsonPropertyName("mode")]
    public string? Mode { get; set; }
}
