using System.Runtime.CompilerServices;
using System.Text.Json.Serialization;
using k8s;
using k8s.Models;
using Weft.Policy;

namespace Weft.Inventory;

/// <summary>
/// Source-generated JSON metadata for the kinds Weft defines itself: its policies here, the Gateway API objects in
/// <c>Weft.Gateway.GatewayApiJson</c>.
/// KubernetesClient serializes its own models from its generated context and falls back to reflection for any other
/// type; putting this context first in its resolver chain takes Weft's kinds off that fallback, which a NativeAOT
/// build cannot use.
/// </summary>
[JsonSourceGenerationOptions(
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    UseStringEnumConverter = true)]
[JsonSerializable(typeof(V1Alpha1AuthorizationPolicy))]
[JsonSerializable(typeof(V1Alpha1PeerAuthentication))]
[JsonSerializable(typeof(KubernetesList<V1Alpha1AuthorizationPolicy>))]
[JsonSerializable(typeof(KubernetesList<V1Alpha1PeerAuthentication>))]
internal sealed partial class OwnKindsJson : JsonSerializerContext
{
    // KubernetesClient's options become read-only at their first use, so this runs when the assembly loads, before any.
    [ModuleInitializer]
    internal static void Register() => KubernetesJson.AddJsonOptions(options => options.TypeInfoResolverChain.Insert(0, Default));
}
