using k8s;
using k8s.Models;

namespace Weft.Inventory;

/// <summary>
/// The loops of one owner of Kubernetes watches (the agent's inventory, the gateway's routes, the CA's pod index):
/// started together, stopped together on dispose (cancelled, given 5 s to end; each loop logs its own failures),
/// and the API client disposed after them when the owner made it.
/// </summary>
internal sealed class KubernetesWatchLoops(IKubernetes client, bool ownsClient) : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private Task[] _loops = [];

    public void Start(IEnumerable<IKubernetesResourceWatch> watches, params Func<CancellationToken, Task>[] others)
    {
        var token = _stop.Token;
        _loops = [.. watches.Select(w => Task.Run(() => w.RunAsync(token))), .. others.Select(loop => Task.Run(() => loop(token)))];
    }

    public void Dispose()
    {
        _stop.Cancel();
        try
        {
            Task.WaitAll(_loops, TimeSpan.FromSeconds(5));
        }
        catch (AggregateException)
        {
            // each loop logs its own failures
        }

        _stop.Dispose();
        if (ownsClient)
        {
            client.Dispose();
        }
    }
}

/// <summary>The list and watch calls of the core kinds more than one owner watches, cluster-wide, bookmarks on.</summary>
internal static class KubernetesCalls
{
    public static (KubernetesListCall<V1NamespaceList> List, KubernetesWatchCall<V1Namespace> Watch) Namespaces(IKubernetes client) => (
        (c, l, ct) => client.CoreV1.ListNamespaceAsync(continueParameter: c, limit: l, cancellationToken: ct),
        (rv, t, e, ct) => client.CoreV1.WatchListNamespaceAsync(allowWatchBookmarks: true, resourceVersion: rv, timeoutSeconds: t, onError: e, cancellationToken: ct));

    public static (KubernetesListCall<V1PodList> List, KubernetesWatchCall<V1Pod> Watch) Pods(IKubernetes client) => (
        (c, l, ct) => client.CoreV1.ListPodForAllNamespacesAsync(continueParameter: c, limit: l, cancellationToken: ct),
        (rv, t, e, ct) => client.CoreV1.WatchListPodForAllNamespacesAsync(allowWatchBookmarks: true, resourceVersion: rv, timeoutSeconds: t, onError: e, cancellationToken: ct));

    public static (KubernetesListCall<V1ServiceList> List, KubernetesWatchCall<V1Service> Watch) Services(IKubernetes client) => (
        (c, l, ct) => client.CoreV1.ListServiceForAllNamespacesAsync(continueParameter: c, limit: l, cancellationToken: ct),
        (rv, t, e, ct) => client.CoreV1.WatchListServiceForAllNamespacesAsync(allowWatchBookmarks: true, resourceVersion: rv, timeoutSeconds: t, onError: e, cancellationToken: ct));

    public static (KubernetesListCall<V1EndpointSliceList> List, KubernetesWatchCall<V1EndpointSlice> Watch) EndpointSlices(IKubernetes client) => (
        (c, l, ct) => client.DiscoveryV1.ListEndpointSliceForAllNamespacesAsync(continueParameter: c, limit: l, cancellationToken: ct),
        (rv, t, e, ct) => client.DiscoveryV1.WatchListEndpointSliceForAllNamespacesAsync(allowWatchBookmarks: true, resourceVersion: rv, timeoutSeconds: t, onError: e, cancellationToken: ct));
}
