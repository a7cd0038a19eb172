namespace Weft.Policy;

/// <summary>The custom resource kinds Weft reads, keyed the way KubernetesYaml's type map wants them ("apiVersion/kind").</summary>
internal static class PolicyKinds
{
    public const string Group = "weft.dev";
    public const string Version = "v1alpha1";
    public const string ApiVersion = Group + "/" + Version;

    /// <summary>Where a policy without a selector applies to every workload in the mesh, like Istio's root namespace.</summary>
    public const string DefaultMeshRootNamespace = "weft-system";

    public static IReadOnlyDictionary<string, Type> All { get; } = new Dictionary<string, Type>(StringComparer.Ordinal)
    {
        [$"{ApiVersion}/{V1Alpha1AuthorizationPolicy.KubeKind}"] = typeof(V1Alpha1AuthorizationPolicy),
        [$"{ApiVersion}/{V1Alpha1PeerAuthentication.KubeKind}"] = typeof(V1Alpha1PeerAuthentication),
    };
}
