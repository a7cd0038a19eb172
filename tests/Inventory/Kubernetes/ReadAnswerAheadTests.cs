using k8s;
using k8s.Models;
using Weft.Inventory;

namespace Weft.Tests.Inventory.Kubernetes;

/// <summary>
/// The gateway's Kubernetes client reads every answer but a watch's into memory before KubernetesClient sees it
/// (<see cref="ReadAnswerAhead"/>), against the wire-level fake API server: a list is still answered, and a
/// watch still streams (an event arrives while the watch is open, not when it ends).
/// </summary>
public class ReadAnswerAheadTests
{
    [Theory]
    [InlineData("https://api:6443/api/v1/namespaces?watch=true&allowWatchBookmarks=true", true)]
    [InlineData("https://api:6443/api/v1/pods?allowWatchBookmarks=true&resourceVersion=5&watch=true", true)]
    [InlineData("https://api:6443/api/v1/watch/namespaces/default/pods", true)]
    [InlineData("https://api:6443/api/v1/namespaces?limit=500", false)]
    [InlineData("https://api:6443/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/web/status", false)]
    [InlineData("https://api:6443/api/v1/namespaces/watch", false)]
    public void AWatchIsToldByItsQueryOrItsLegacyPath(string uri, bool watch) => Assert.Equal(watch, ReadAnswerAhead.IsWatch(new Uri(uri)));

    [Fact]
    public async Task AListIsAnswered_AndAWatchStillStreamsItsEventsAsTheyHappen()
    {
        await using var api = FakeApiServer.Start();
        var dir = Directory.CreateTempSubdirectory("weft-read-ahead-").FullName;
        try
        {
            var kubeconfig = api.WriteKubeconfig(Path.Combine(dir, "kubeconfig"));
            api.Apply(KubernetesObjects.Namespace("first", meshEnabled: true));
            using var client = new KubernetesApiOptions { Kubeconfig = kubeconfig, ReadAnswersAhead = true }.CreateClient();

            var list = await client.CoreV1.ListNamespaceAsync();
            Assert.Equal(["first"], list.Items.Select(n => n.Metadata.Name));

            // The watch is open for a minute; the event must come while it is, not when the server ends it.
            using var within = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            var (_, watch) = KubernetesCalls.Namespaces(client);
            var events = watch(list.Metadata.ResourceVersion, 60, _ => { }, within.Token).GetAsyncEnumerator(within.Token);
            var next = events.MoveNextAsync().AsTask();
            await api.WaitForWatchesAsync(TimeSpan.FromSeconds(10), kinds: 1);
            api.Apply(KubernetesObjects.Namespace("second", meshEnabled: false));
            Assert.True(await next, "the watch ended without an event");
            Assert.Equal((WatchEventType.Added, "second"), (events.Current.Type, events.Current.Item.Metadata.Name));
            await events.DisposeAsync();
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
