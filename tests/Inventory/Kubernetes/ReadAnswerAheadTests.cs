using System.Net;
using System.Net.Sockets;
using System.Text;
using k8s;
using k8s.Models;
using Weft.Inventory;

namespace Weft.Tests.Inventory.Kubernetes;

/// <summary>
/// The gateway's Kubernetes client reads every answer but a watch's into memory before KubernetesClient sees it
/// (<see cref="ReadAnswerAhead"/>), against the wire-level fake API server: a list is still answered, and a
/// watch still streams (an event arrives while the watch is open, not when it ends); an answer larger than the cap is
/// not read, and the error names the request and the cap.
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
    public Task AListIsAnswered_AndAWatchStillStreamsItsEventsAsTheyHappen() => WithClientAsync(maxAnswerBytes: null, async (api, client) =>
        {
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
        });

    [Fact]
    public Task AListLargerThanTheCap_FailsWithAnErrorThatNamesIt_WhileASmallerOneIsAnswered() => WithClientAsync(maxAnswerBytes: 4096, async (api, client) =>
        {
            Assert.Single((await client.CoreV1.ListNamespaceAsync()).Items);

            for (var i = 0; i < 40; i++)
            {
                api.Apply(KubernetesObjects.Namespace($"team-{i:00}-with-a-long-enough-name", meshEnabled: true));
            }

            var e = await Assert.ThrowsAsync<HttpRequestException>(() => client.CoreV1.ListNamespaceAsync());
            Assert.Contains("GET /api/v1/namespaces holds", e.Message);
            Assert.Contains("more than the 4096 bytes", e.Message);
        });

    [Fact]
    public async Task AChunkedAnswerIsCutAtTheCap_NotReadToItsEnd()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var served = ServeChunkedAsync(listener, chunks: 1024, chunkBytes: 16384);
        using var invoker = new HttpMessageInvoker(new ReadAnswerAhead(8192) { InnerHandler = new SocketsHttpHandler() });
        using var request = new HttpRequestMessage(HttpMethod.Get, $"http://127.0.0.1:{((IPEndPoint)listener.LocalEndpoint).Port}/api/v1/secrets?limit=500");

        var e = await Assert.ThrowsAsync<HttpRequestException>(() => invoker.SendAsync(request, CancellationToken.None));
        Assert.Equal("the Kubernetes API server's answer to GET /api/v1/secrets holds more than the 8192 bytes an answer may hold in memory here; it was not read", e.Message);
        Assert.True(await served < 1024, "the whole 16 MiB answer was sent: the client kept reading past the cap");
    }

    /// <summary>The fake API server with one namespace, "first", and a client that reads answers ahead.</summary>
    private static async Task WithClientAsync(long? maxAnswerBytes, Func<FakeApiServer, IKubernetes, Task> body)
    {
        await using var api = FakeApiServer.Start();
        var dir = Directory.CreateTempSubdirectory("weft-read-ahead-").FullName;
        try
        {
            var kubeconfig = api.WriteKubeconfig(Path.Combine(dir, "kubeconfig"));
            api.Apply(KubernetesObjects.Namespace("first", meshEnabled: true));
            var options = new KubernetesApiOptions { Kubeconfig = kubeconfig, ReadAnswersAhead = true };
            using var client = (maxAnswerBytes is { } cap ? options with { MaxAnswerBytes = cap } : options).CreateClient();
            await body(api, client);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Answers one request with a chunked body, one chunk at a time; returns how many chunks were written before the client left.</summary>
    private static async Task<int> ServeChunkedAsync(TcpListener listener, int chunks, int chunkBytes)
    {
        using var peer = await listener.AcceptTcpClientAsync();
        var stream = peer.GetStream();
        var head = new byte[4096];
        _ = await stream.ReadAsync(head);
        await stream.WriteAsync("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"u8.ToArray());
        var chunk = Encoding.ASCII.GetBytes($"{chunkBytes:x}\r\n{new string(' ', chunkBytes)}\r\n");
        for (var i = 0; i < chunks; i++)
        {
            try
            {
                await stream.WriteAsync(chunk);
            }
            catch (IOException)
            {
                return i;
            }
        }

        return chunks;
    }
}
