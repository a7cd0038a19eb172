using System.Text.Json;
using System.Text.RegularExpressions;
using k8s;
using k8s.Models;
using Weft.Inventory;
using Weft.Tests.Daemonset;

namespace Weft.Tests.Inventory.Kubernetes;

/// <summary>
/// KubernetesClient reads watch events through an envelope its own generated JSON metadata lacks; a NativeAOT agent
/// (no reflection) read none of them until <see cref="KubernetesWatchJson"/> supplied it. Under the JIT the reflection
/// fallback hides a missing envelope, so these tests check the generated metadata itself.
/// </summary>
public sealed partial class KubernetesWatchJsonTests
{
    [Fact]
    public void EveryKindWeftWatches_HasItsEventEnvelopeInTheGeneratedMetadata()
    {
        var kinds = new SortedSet<string>(StringComparer.Ordinal);
        var agent = Path.Combine(ManifestValidator.RepositoryRoot, "agent");
        foreach (var file in Directory.EnumerateFiles(agent, "*.cs", SearchOption.AllDirectories))
        {
            if (file.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal))
            {
                continue;
            }

            foreach (Match call in WatchCall().Matches(File.ReadAllText(file)))
            {
                kinds.Add(call.Groups["kind"].Value);
            }
        }

        // namespaces, pods, services, endpoint slices (agent, CA, gateway); ingresses, ingress classes, secrets and custom objects (gateway, policies)
        Assert.True(kinds.Count >= 8, $"the scan found only: {string.Join(", ", kinds)}");
        foreach (var kind in kinds)
        {
            var item = kind.EndsWith("CustomObject", StringComparison.Ordinal) ? typeof(object) : typeof(V1Pod).Assembly.GetType($"k8s.Models.V1{kind}");
            Assert.True(item is not null, $"no model for the watched kind {kind}");
            var envelope = typeof(Watcher<>.WatchEvent).MakeGenericType(item);
            Assert.True(KubernetesWatchJson.Default.GetTypeInfo(envelope) is not null, $"Watcher<{item.Name}>.WatchEvent has no generated metadata: add it to KubernetesWatchJson");
        }

        Assert.NotNull(KubernetesWatchJson.Default.GetTypeInfo(typeof(Watcher<KubernetesObject>.WatchEvent)));
        Assert.NotNull(KubernetesWatchJson.Default.GetTypeInfo(typeof(Watcher<V1Status>.WatchEvent)));
    }

    [Fact]
    public void WatchLines_AreReadByTheGeneratedMetadataAlone_AnObjectAStatusAndACustomObject()
    {
        // The context's own options resolve from it alone: no reflection, as under NativeAOT.
        var added = JsonSerializer.Deserialize(
            """{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-1","namespace":"demo","resourceVersion":"42"},"status":{"podIP":"10.244.1.7"}}}""",
            KubernetesWatchJson.Default.WatchEventV1Pod);
        Assert.Equal(WatchEventType.Added, added!.Type);
        Assert.Equal("web-1", added.Object.Metadata.Name);
        Assert.Equal("42", added.Object.Metadata.ResourceVersion);
        Assert.Equal("10.244.1.7", added.Object.Status.PodIP);

        const string Gone = """{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Expired","code":410}}""";
        Assert.Equal("Status", JsonSerializer.Deserialize(Gone, KubernetesWatchJson.Default.WatchEventKubernetesObject)!.Object.Kind);
        var status = JsonSerializer.Deserialize(Gone, KubernetesWatchJson.Default.WatchEventV1Status);
        Assert.Equal(WatchEventType.Error, status!.Type);
        Assert.Equal(410, status.Object.Code);

        var custom = JsonSerializer.Deserialize(
            """{"type":"BOOKMARK","object":{"kind":"AuthorizationPolicy","apiVersion":"security.weft.dev/v1alpha1","metadata":{"resourceVersion":"7"}}}""",
            KubernetesWatchJson.Default.WatchEventObject);
        Assert.Equal(WatchEventType.Bookmark, custom!.Type);
        Assert.Equal("7", ((JsonElement)custom.Object).GetProperty("metadata").GetProperty("resourceVersion").GetString());
    }

    [GeneratedRegex(@"\.WatchList(?<kind>[A-Za-z]+?)(ForAllNamespaces)?Async\(")]
    private static partial Regex WatchCall();
}
