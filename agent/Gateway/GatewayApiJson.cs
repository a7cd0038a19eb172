using System.Runtime.CompilerServices;
using System.Text.Json.Serialization;
using k8s;
using k8s.Models;

namespace Weft.Gateway;

/// <summary>
/// Source-generated JSON metadata for the Gateway API objects the gateway reads, first in KubernetesClient's resolver
/// chain as <see cref="Inventory.OwnKindsJson"/> is for the policies, so they take no reflection fallback.
/// </summary>
[JsonSourceGenerationOptions(
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    UseStringEnumConverter = true)]
[JsonSerializable(typeof(GatewayClassResource))]
[JsonSerializable(typeof(GatewayResource))]
[JsonSerializable(typeof(HttpRouteResource))]
[JsonSerializable(typeof(ReferenceGrantResource))]
[JsonSerializable(typeof(KubernetesList<GatewayClassResource>))]
[JsonSerializable(typeof(KubernetesList<GatewayResource>))]
[JsonSerializable(typeof(KubernetesList<HttpRouteResource>))]
[JsonSerializable(typeof(KubernetesList<ReferenceGrantResource>))]
internal sealed partial class GatewayApiJson : JsonSerializerContext
{
    // KubernetesClient's options become read-only at their first use, so this runs when the assembly loads, before any.
    [ModuleInitializer]
    internal static void Register()
    {
        // weft-agent has no gateway: leaving the context unregistered leaves it out of that binary.
        if (BuildFeatures.Edge)
        {
            KubernetesJson.AddJsonOptions(options => options.TypeInfoResolverChain.Insert(0, Default));
        }
    }
}
