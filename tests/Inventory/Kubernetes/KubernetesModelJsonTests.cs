using System.Text.Json;
using System.Text.RegularExpressions;
using k8s;
using k8s.Models;
using Weft.Inventory;
using Weft.Tests.Daemonset;

namespace Weft.Tests.Inventory.Kubernetes;

/// <summary>
/// KubernetesClient reads watch events through an envelope its own generated JSON metadata lacks; a NativeAOT agent
/// (no reflection) read none of them until <see cref="KubernetesModelJson"/> supplied it. In <c>weft-agent</c>
/// KubernetesClient's metadata is left out altogether, so every list and every kind the agent reads must be there too.
/// Under the JIT KubernetesClient's metadata and the reflection fallback hide a missing one, so these tests check the
/// generated metadata itself.
/// </summary>
public sealed partial class KubernetesModelJsonTests
{
    [Fact]
    public void EveryKindWeftWatches_HasItsEventEnvelopeInTheGeneratedMetadata()
    {
        var kinds = KindsCalled(WatchCall());

        // namespaces, pods, services, endpoint slices (agent, CA, gateway); ingresses, ingress classes, secrets and custom objects (gateway, policies)
        Assert.True(kinds.Count >= 8, $"the scan found only: {string.Join(", ", kinds)}");
        foreach (var kind in kinds)
        {
            var item = kind.EndsWith("CustomObject", StringComparison.Ordinal) ? typeof(object) : typeof(V1Pod).Assembly.GetType($"k8s.Models.V1{kind}");
            Assert.True(item is not null, $"no model for the watched kind {kind}");
            var envelope = typeof(Watcher<>.WatchEvent).MakeGenericType(item);
            Assert.True(KubernetesModelJson.Default.GetTypeInfo(envelope) is not null, $"Watcher<{item.Name}>.WatchEvent has no generated metadata: add it to KubernetesModelJson");
        }

        Assert.NotNull(KubernetesModelJson.Default.GetTypeInfo(typeof(Watcher<KubernetesObject>.WatchEvent)));
        Assert.NotNull(KubernetesModelJson.Default.GetTypeInfo(typeof(Watcher<V1Status>.WatchEvent)));
    }

    [Fact]
    public void WatchLines_AreReadByTheGeneratedMetadataAlone_AnObjectAStatusAndACustomObject()
    {
        // The context's own options resolve from it alone: no reflection, as under NativeAOT.
        var added = JsonSerializer.Deserialize(
            """{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-1","namespace":"demo","resourceVersion":"42"},"status":{"podIP":"10.244.1.7"}}}""",
            KubernetesModelJson.Default.WatchEventV1Pod);
        Assert.Equal(WatchEventType.Added, added!.Type);
        Assert.Equal("web-1", added.Object.Metadata.Name);
        Assert.Equal("42", added.Object.Metadata.ResourceVersion);
        Assert.Equal("10.244.1.7", added.Object.Status.PodIP);

        const string Gone = """{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Expired","code":410}}""";
        Assert.Equal("Status", JsonSerializer.Deserialize(Gone, KubernetesModelJson.Default.WatchEventKubernetesObject)!.Object.Kind);
        var status = JsonSerializer.Deserialize(Gone, KubernetesModelJson.Default.WatchEventV1Status);
        Assert.Equal(WatchEventType.Error, status!.Type);
        Assert.Equal(410, status.Object.Code);

        var custom = JsonSerializer.Deserialize(
            """{"type":"BOOKMARK","object":{"kind":"AuthorizationPolicy","apiVersion":"security.weft.dev/v1alpha1","metadata":{"resourceVersion":"7"}}}""",
            KubernetesModelJson.Default.WatchEventObject);
        Assert.Equal(WatchEventType.Bookmark, custom!.Type);
        Assert.Equal("7", ((JsonElement)custom.Object).GetProperty("metadata").GetProperty("resourceVersion").GetString());
    }

    [Fact]
    public void EveryKindWeftLists_HasItsListInTheGeneratedMetadata()
    {
        var kinds = KindsCalled(ListCall());

        // namespaces, pods, services, endpoint slices, daemon sets, deployments, ingresses, ingress classes, secrets
        Assert.True(kinds.Count >= 9, $"the scan found only: {string.Join(", ", kinds)}");
        foreach (var kind in kinds.Where(k => !k.EndsWith("CustomObject", StringComparison.Ordinal)))
        {
            var list = typeof(V1Pod).Assembly.GetType($"k8s.Models.V1{kind}List");
            Assert.True(list is not null, $"no list model for the listed kind {kind}");
            Assert.True(KubernetesModelJson.Describes(list), $"{list.Name} has no generated metadata: add it to KubernetesModelJson");
        }
    }

    [Fact]
    public void TheKindsTheInventoryReads_AreDescribed_AndWhatTheyHoldWith()
    {
        foreach (var type in new[] { typeof(V1Namespace), typeof(V1Pod), typeof(V1Service), typeof(V1EndpointSlice), typeof(V1Status), typeof(V1PodSpec), typeof(IntOrString) })
        {
            Assert.True(KubernetesModelJson.Describes(type), $"{type.Name} has no generated metadata");
        }

        // KubernetesClient's other kinds are not Weft's to describe: weft-agent skips them in a file inventory.
        Assert.False(KubernetesModelJson.Describes(typeof(V1ConfigMap)));
    }

    /// <summary>The kinds named by the calls <paramref name="call"/> matches in the agent's sources (its "kind" group).</summary>
    private static SortedSet<string> KindsCalled(Regex call) =>
        new(Directory.EnumerateFiles(Path.Combine(ManifestValidator.RepositoryRoot, "agent"), "*.cs", SearchOption.AllDirectories)
                .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal))
                .SelectMany(f => call.Matches(File.ReadAllText(f)))
                .Select(m => m.Groups["kind"].Value),
            StringComparer.Ordinal);

    [GeneratedRegex(@"\.WatchList(?<kind>[A-Za-z]+?)(ForAllNamespaces)?Async\(")]
    private static partial Regex WatchCall();

    [GeneratedRegex(@"\.List(Namespaced)?(?<kind>[A-Z][A-Za-z]+?)(ForAllNamespaces)?Async\(")]
    private static partial Regex ListCall();
}
