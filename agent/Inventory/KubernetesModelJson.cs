using System.Runtime.CompilerServices;
using System.Text.Json.Serialization;
using k8s;
using k8s.Models;

namespace Weft.Inventory;

/// <summary>
/// Source-generated JSON metadata for every Kubernetes model Weft reads: the lists it lists, and the envelope of every
/// watch event it reads (<c>{"type": ..., "object": ...}</c>):
/// KubernetesClient reads each line of a watch as its <see cref="Watcher{T}.WatchEvent"/>, first as one of
/// <see cref="KubernetesObject"/> to see whether it is a <see cref="V1Status"/> (an ERROR event), then as one of the
/// watched kind (<see cref="object"/> for custom objects). Its own generated context has none of those envelopes, so
/// it reads them by reflection, which a NativeAOT build does not have: there every event failed ("Deserialization of
/// types without a parameterless constructor ... is not supported"), and an agent listed once and never saw a change.
/// First in KubernetesClient's resolver chain, as <see cref="OwnKindsJson"/> is; the calls and the code path stay
/// KubernetesClient's. A kind watched anywhere in Weft needs its envelope here, a kind listed its list (tests compare
/// with the calls). In <c>weft-agent</c> (<see cref="Weft.BuildFeatures.KubernetesModels"/>) KubernetesClient's own
/// context resolves nothing, so this is all the Kubernetes model metadata that binary has: its file inventory reads
/// the kinds found here (with their parts) and skips the others.
/// </summary>
[JsonSerializable(typeof(Watcher<KubernetesObject>.WatchEvent))]
[JsonSerializable(typeof(Watcher<V1Status>.WatchEvent))]
[JsonSerializable(typeof(Watcher<object>.WatchEvent))]
[JsonSerializable(typeof(Watcher<V1Namespace>.WatchEvent))]
[JsonSerializable(typeof(Watcher<V1Pod>.WatchEvent))]
[JsonSerializable(typeof(Watcher<V1Service>.WatchEvent))]
[JsonSerializable(typeof(Watcher<V1EndpointSlice>.WatchEvent))]
[JsonSerializable(typeof(Watcher<V1Ingress>.WatchEvent))]
[JsonSerializable(typeof(Watcher<V1IngressClass>.WatchEvent))]
[JsonSerializable(typeof(Watcher<V1Secret>.WatchEvent))]
[JsonSerializable(typeof(V1NamespaceList))]
[JsonSerializable(typeof(V1PodList))]
[JsonSerializable(typeof(V1ServiceList))]
[JsonSerializable(typeof(V1EndpointSliceList))]
[JsonSerializable(typeof(V1IngressList))]
[JsonSerializable(typeof(V1IngressClassList))]
[JsonSerializable(typeof(V1SecretList))]
[JsonSerializable(typeof(V1DaemonSetList))]
[JsonSerializable(typeof(V1DeploymentList))]
internal sealed partial class KubernetesModelJson : JsonSerializerContext
{
    /// <summary>Whether this context (not KubernetesClient's) describes <paramref name="type"/>.</summary>
    internal static bool Describes(Type type) => Default.GetTypeInfo(type) is not null;

    // KubernetesClient's options become read-only at their first use, so this runs when the assembly loads, before any.
    [ModuleInitializer]
    internal static void Register() => KubernetesJson.AddJsonOptions(options => options.TypeInfoResolverChain.Insert(0, Default));
}
