using k8s;
using k8s.Models;

namespace Weft.Inventory;

/// <summary>How the agent reaches the Kubernetes API and finds pods on its node (the command line's --kubernetes mode).</summary>
internal sealed record KubernetesApiOptions
{
    /// <summary>A kubeconfig file; null: in-cluster configuration when running in a pod, else $KUBECONFIG or ~/.kube/config.</summary>
    public string? Kubeconfig { get; init; }

    /// <summary>Where kubelet's kubepods cgroups are, for the node agent to find local pods' namespaces; null: the cgroup v2 mount.</summary>
    public string? PodCgroupRoot { get; init; }

    /// <summary>
    /// The client for these settings: a kubeconfig file, in-cluster service account, or the default kubeconfig. Kubeconfig
    /// files are read by <see cref="KubeconfigFile"/>, not KubernetesClient's YAML, which a NativeAOT build cannot run.
    /// </summary>
    public IKubernetes CreateClient()
    {
        var config = Kubeconfig is not null ? KubeconfigFile.BuildConfig(Kubeconfig)
            : KubernetesClientConfiguration.IsInCluster() ? KubernetesClientConfiguration.InClusterConfig()
            : KubeconfigFile.BuildDefaultConfig();
        return ReadAnswersAhead ? new k8s.Kubernetes(config, new ReadAnswerAhead(MaxAnswerBytes)) : new k8s.Kubernetes(config);
    }

    /// <summary>
    /// Read every answer but a watch's into memory before the client sees it (<see cref="ReadAnswerAhead"/>): for a
    /// process whose socket completions run inline on the runtime's socket threads (the gateway).
    /// </summary>
    public bool ReadAnswersAhead { get; init; }

    /// <summary>
    /// With <see cref="ReadAnswersAhead"/>, the most one answer may hold in memory (default 256 MiB). Lists come in pages of
    /// <see cref="KubernetesInventoryOptions.ListPageSize"/> objects, and the API server refuses objects over about 1.5 MiB, so
    /// only a misbehaving server or proxy reaches it; that request fails with an error that says so, and is retried.
    /// </summary>
    public long MaxAnswerBytes { get; init; } = 256L << 20;
}

/// <summary>
/// KubernetesClient deserializes an answer that is not a watch with a synchronous <see cref="Stream.Read(Span{byte})"/>,
/// called from the continuation of the request. When socket completions run inline on the runtime's socket event threads
/// (DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS, as the gateway sets it), that continuation runs on such a thread, and the
/// read waits for bytes that only the same thread can deliver: every socket on that thread stalls for good. This reads the
/// whole answer asynchronously first, so the client's read comes from memory. A watch streams for minutes and is read
/// line by line with ReadLineAsync, so it is passed on as it is.
/// </summary>
internal sealed class ReadAnswerAhead(long maxAnswerBytes) : DelegatingHandler
{
    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        var response = await base.SendAsync(request, cancellationToken).ConfigureAwait(false);
        if (!IsWatch(request.RequestUri))
        {
            try
            {
                if (response.Content.Headers.ContentLength > maxAnswerBytes)
                {
                    throw TooLarge(request, $"{response.Content.Headers.ContentLength} bytes, more than", null);
                }

                await response.Content.LoadIntoBufferAsync(maxAnswerBytes, cancellationToken).ConfigureAwait(false);
            }
            catch (HttpRequestException e) when (e.InnerException is null && response.Content.Headers.ContentLength is null && !cancellationToken.IsCancellationRequested)
            {
                // HttpContent's own "more bytes than the configured maximum buffer size" (a chunked answer); a network
                // error during the read comes wrapped, with the IOException inside.
                response.Dispose();
                throw TooLarge(request, "more than", e);
            }
            catch
            {
                response.Dispose();
                throw;
            }
        }

        return response;
    }

    private HttpRequestException TooLarge(HttpRequestMessage request, string size, Exception? inner) => new(
        $"the Kubernetes API server's answer to {request.Method} {request.RequestUri?.AbsolutePath} holds {size} the {maxAnswerBytes} bytes " +
        "an answer may hold in memory here; it was not read", inner);

    /// <summary>The API's watch requests: <c>watch=true</c> (or <c>1</c>) in the query, or the legacy <c>/watch/</c> paths.</summary>
    internal static bool IsWatch(Uri? uri)
    {
        if (uri is null)
        {
            return false;
        }

        if (uri.AbsolutePath.Contains("/watch/", StringComparison.Ordinal))
        {
            return true;
        }

        foreach (var part in uri.Query.TrimStart('?').Split('&'))
        {
            if (part.Equals("watch=true", StringComparison.OrdinalIgnoreCase) || part == "watch=1")
            {
                return true;
            }
        }

        return false;
    }
}

/// <summary>Tuning for <see cref="KubernetesInventorySource"/>; the defaults suit an agent, tests shorten the waits.</summary>
internal sealed record KubernetesInventoryOptions
{
    /// <summary>This node's name (spec.nodeName of the pods the agent enrolls).</summary>
    public required string NodeName { get; init; }

    /// <summary>
    /// Quiet time after a change before publishing, so a burst of watch events (a rollout) makes one snapshot.
    /// Short: applying a change costs only what it touches (<see cref="InventoryState"/>), and issue 16 asks
    /// for at most 100 ms from the API event to the data path.
    /// </summary>
    public TimeSpan Debounce { get; init; } = TimeSpan.FromMilliseconds(10);

    /// <summary>Longest a change waits for a quiet moment before it is published anyway.</summary>
    public TimeSpan MaxDebounce { get; init; } = TimeSpan.FromMilliseconds(50);

    /// <summary>First wait after a failed list or watch; doubles per failure up to <see cref="MaxBackoff"/>.</summary>
    public TimeSpan InitialBackoff { get; init; } = TimeSpan.FromMilliseconds(200);

    public TimeSpan MaxBackoff { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Server-side watch timeout; each watch gets a random value between this and twice it, so agents do not reconnect in step.</summary>
    public TimeSpan WatchTimeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>Items per list page (limit/continue), so a large cluster never arrives as one huge response.</summary>
    public int ListPageSize { get; init; } = 500;

    /// <summary>Where AuthorizationPolicies and PeerAuthentications apply mesh-wide (Istio's root namespace).</summary>
    public string MeshRootNamespace { get; init; } = Weft.Policy.PolicyKinds.DefaultMeshRootNamespace;
}
