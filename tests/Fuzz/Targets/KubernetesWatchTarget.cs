using System.Net;
using System.Text;
using k8s;
using k8s.Models;
using Weft.Inventory;
using Weft.Policy;

namespace Weft.Fuzz;

/// <summary>
/// A watch response body (one JSON event per line, as the API server streams it) through the real
/// KubernetesClient decoder into the agent's watch cache, for pods (typed, then trimmed) and for
/// AuthorizationPolicies (untyped custom objects read into the model); each change it hands on is applied to an
/// <see cref="InventoryState"/>, as the Kubernetes source does, which then makes a snapshot.
/// The watch ends its pass on an ERROR event with a clear error; a line it cannot read is skipped and
/// logged. Whatever else escapes, or is reported through the skip path, is a crash.
/// </summary>
internal sealed class KubernetesWatchTarget : IFuzzTarget
{
    private static readonly InputHandler Handler = new();

    private static readonly IKubernetes Client = new Kubernetes(new KubernetesClientConfiguration { Host = "http://fuzz.invalid" }, Handler);

    private static readonly KubernetesInventoryOptions Options = new() { NodeName = "node1" };

    public string Name => "k8s-watch";

    public string Description => "a Kubernetes watch stream into the KubernetesClient decoder and the agent's watch cache";

    public void Run(ReadOnlySpan<byte> input)
    {
        Handler.Body = input.ToArray();
        var skipped = new List<Exception>();
        var changes = new List<InventoryChange>();
        var pods = new KubernetesResourceWatch<V1Pod, V1PodList>("pods",
            (_, _, _) => Task.FromResult(new V1PodList { Items = [], Metadata = new V1ListMeta { ResourceVersion = "1" } }),
            (rv, t, onError, ct) => Client.CoreV1.WatchListPodForAllNamespacesAsync(allowWatchBookmarks: true, resourceVersion: rv, timeoutSeconds: t,
                onError: Observing(onError, skipped), cancellationToken: ct),
            KubernetesInventorySource.TrimPod, () => { }, Options, changes.Add);
        var policies = new KubernetesResourceWatch<V1Alpha1AuthorizationPolicy, KubernetesList<V1Alpha1AuthorizationPolicy>>("authorizationpolicies",
            (_, _, _) => Task.FromResult(new KubernetesList<V1Alpha1AuthorizationPolicy>([])),
            (rv, t, onError, ct) => KubernetesInventorySource.Typed<V1Alpha1AuthorizationPolicy>(Client.CustomObjects.WatchListCustomObjectForAllNamespacesAsync(
                PolicyKinds.Group, PolicyKinds.Version, "authorizationpolicies", allowWatchBookmarks: true, resourceVersion: rv, timeoutSeconds: t,
                onError: Observing(onError, skipped), cancellationToken: ct), Observing(onError, skipped)),
            item => item, () => { }, Options, changes.Add);

        var pass = Task.Run(async () =>
        {
            await WatchOnceAsync(pods).ConfigureAwait(false);
            await WatchOnceAsync(policies).ConfigureAwait(false);
        });
        // AFL++ kills a hung execution itself (run.sh: 5 s); this bound is for the replay test on a loaded machine.
        if (!pass.Wait(TimeSpan.FromSeconds(90)))
        {
            throw new TimeoutException("the watch did not end after its input ran out");
        }

        pass.GetAwaiter().GetResult();
        if (skipped.FirstOrDefault(e => !IsUnreadableEvent(e)) is { } unexpected)
        {
            throw new UnexpectedFailureException(unexpected);
        }

        var state = new InventoryState(PolicyKinds.DefaultMeshRootNamespace);
        foreach (var change in changes)
        {
            KubernetesInventorySource.Apply(state, change);
        }

        _ = state.Snapshot();
    }

    private static async Task WatchOnceAsync<T, TList>(KubernetesResourceWatch<T, TList> watch)
        where T : class, IKubernetesObject<V1ObjectMeta>
        where TList : IMetadata<V1ListMeta>, IItems<T>
    {
        try
        {
            await watch.WatchAsync("1", TimeSpan.FromSeconds(60), CancellationToken.None).ConfigureAwait(false);
        }
        catch (InvalidOperationException e) when (e.InnerException is KubernetesException)
        {
            // An ERROR event other than 410: the watch pass ends with that status, the loop retries.
        }
        catch (System.Text.Json.JsonException)
        {
            // A response the client cannot read at all fails the pass; the loop retries with backoff, keeping the last snapshot.
        }
        catch (HttpRequestException e) when (e.InnerException?.TargetSite?.DeclaringType?.Assembly == typeof(Kubernetes).Assembly)
        {
            // The same, caught earlier: KubernetesClient's line reader fails on a body it cannot split into
            // lines at all (e.g. a lone byte-order mark, found by AFL++), and the loop retries the same way.
        }
    }

    // Events the watch skips: malformed JSON, a value of the wrong type, or a line KubernetesClient's own
    // decoder failed on (it reports those per event, e.g. a NullReferenceException for a line without an
    // object, and goes on). Anything else reported there came from Weft's code and is a bug.
    private static bool IsUnreadableEvent(Exception e) =>
        e is System.Text.Json.JsonException or KubernetesException || e.TargetSite?.DeclaringType?.Assembly == typeof(Kubernetes).Assembly;

    private static Action<Exception> Observing(Action<Exception> onError, List<Exception> seen) => e =>
    {
        lock (seen)
        {
            seen.Add(e);
        }

        onError(e);
    };

    public IEnumerable<(string Name, byte[] Content)> Seeds()
    {
        yield return ("pod-events", Encoding.UTF8.GetBytes("""
            {"type":"ADDED","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a1","namespace":"demo","uid":"u1","resourceVersion":"2","labels":{"app":"a"},"annotations":{"weft.dev/netns":"/var/run/netns/a1","other":"x"}},"spec":{"nodeName":"node1","serviceAccountName":"client","containers":[{"name":"c","image":"i"}]},"status":{"phase":"Running","podIP":"10.244.1.2","podIPs":[{"ip":"10.244.1.2"}],"hostIP":"10.0.0.1"}}}
            {"type":"MODIFIED","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a1","namespace":"demo","uid":"u1","resourceVersion":"3"},"spec":{"nodeName":"node1"},"status":{"podIP":"10.244.1.3"}}}
            {"type":"BOOKMARK","object":{"apiVersion":"v1","kind":"Pod","metadata":{"resourceVersion":"4"}}}
            {"type":"DELETED","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a1","namespace":"demo","uid":"u1","resourceVersion":"5"}}}

            """));
        yield return ("policy-events", Encoding.UTF8.GetBytes("""
            {"type":"ADDED","object":{"apiVersion":"weft.dev/v1alpha1","kind":"AuthorizationPolicy","metadata":{"name":"p","namespace":"demo","uid":"p1","resourceVersion":"7"},"spec":{"action":"DENY","rules":[{"from":[{"source":{"ipBlocks":["10.0.0.0/8"]}}],"to":[{"operation":{"ports":["80"]}}]}]}}}
            {"type":"MODIFIED","object":{"apiVersion":"weft.dev/v1alpha1","kind":"AuthorizationPolicy","metadata":{"name":"p","namespace":"demo","uid":"p1","resourceVersion":"8"},"spec":{"selector":{"matchLabels":{"app":"b"}}}}}

            """));
        yield return ("error-event", Encoding.UTF8.GetBytes("""
            {"type":"ADDED","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"b","namespace":"demo","resourceVersion":"9"}}}
            {"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version","reason":"Expired","code":410}}

            """));
        yield return ("bad-line", Encoding.UTF8.GetBytes("""
            {"type":"ADDED","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":3}}}
            not json
            {"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","code":500,"reason":"InternalError"}}

            """));
    }

    /// <summary>Answers every request with 200 and the current input as the body; nothing leaves the process.</summary>
    private sealed class InputHandler : DelegatingHandler
    {
        public byte[] Body { get; set; } = [];

        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) =>
            Task.FromResult(new HttpResponseMessage(HttpStatusCode.OK) { Content = new ByteArrayContent(Body), RequestMessage = request });
    }
}
