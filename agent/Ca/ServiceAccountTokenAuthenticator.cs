using System.Net;
using k8s;
using k8s.Autorest;
using k8s.Models;
using Weft.Identity;

namespace Weft.Ca;

/// <summary>How the CA authenticates callers in Kubernetes mode.</summary>
internal sealed record KubernetesCallerOptions
{
    /// <summary>The audience the caller's projected token must be for (the DaemonSet's serviceAccountToken volume names it).</summary>
    public string Audience { get; init; } = "weft-ca";

    /// <summary>Service accounts (<c>namespace/name</c>) whose pods are node agents; a token of any other is refused.</summary>
    public IReadOnlyList<string> NodeAccounts { get; init; } = ["weft-system/weft-agent"];

    /// <summary>
    /// Service accounts (<c>namespace/name</c>) whose pods are gateways: each may ask only for its own identity
    /// (spiffe://TD/ns/NS/sa/NAME), never a workload's. None by default: the gateway's Deployment names its account.
    /// </summary>
    public IReadOnlyList<string> GatewayAccounts { get; init; } = [];

    /// <summary>Longest bearer token accepted; a projected token is about 1 KiB.</summary>
    public int MaxTokenBytes { get; init; } = 16 * 1024;

    /// <summary>How long one TokenReview may take before the request fails as UNAVAILABLE.</summary>
    public TimeSpan ReviewTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Positive TokenReview answers kept (by token hash); 0 turns the cache off.</summary>
    public int ReviewCacheEntries { get; init; } = 4096;

    /// <summary>How long a positive answer is reused at most (never past the token's own expiry).</summary>
    public TimeSpan ReviewCacheMaxAge { get; init; } = TimeSpan.FromSeconds(60);
}

/// <summary>
/// Kubernetes mode: the caller sends its pod's projected service-account token as <c>authorization: Bearer</c>
/// (Istio's agents and ztunnel do the same), and the CA asks the API server who it is:
/// <code>
///   bearer token ──TokenReview (authentication.k8s.io/v1, our audience)──► authenticated, audiences ∋ ours
///     ──user system:serviceaccount:NS:SA──► a configured node account (or gateway account)
///     ──extra pod-name, pod-uid──► that pod in the pod watch, same name and namespace, scheduled, not finished
///     ──its spec.nodeName──► node N (a gateway account: node N, for its own identity spiffe://TD/ns/NS/sa/SA only)
/// </code>
/// The node is the pod's, from the watch, never a claim of the caller. A TokenReview that cannot be made (API
/// server unreachable, RBAC) is the CA's trouble, not the caller's: it fails as UNAVAILABLE so the client retries.
/// </summary>
internal sealed class ServiceAccountTokenAuthenticator : ICaCallerAuthenticator
{
    public const string PodNameExtra = "authentication.kubernetes.io/pod-name";
    public const string PodUidExtra = "authentication.kubernetes.io/pod-uid";
    private const string ServiceAccountUserPrefix = "system:serviceaccount:";

    private readonly IKubernetes _client;
    private readonly KubernetesPodIndex _pods;
    private readonly string _trustDomain;
    private readonly KubernetesCallerOptions _options;
    private readonly HashSet<string> _nodeAccounts;
    private readonly TokenReviewCache _reviews;
    private readonly CaMetrics _metrics;
    private readonly HashSet<string> _gatewayAccounts;

    public ServiceAccountTokenAuthenticator(IKubernetes client, KubernetesPodIndex pods, string trustDomain, KubernetesCallerOptions options, CaMetrics metrics)
    {
        foreach (var account in options.NodeAccounts.Concat(options.GatewayAccounts))
        {
            if (account.Split('/') is not [{ Length: > 0 }, { Length: > 0 }])
            {
                throw new ArgumentException($"service account '{account}' is not namespace/name", nameof(options));
            }
        }

        // A node account may ask for any identity with a pod on its node: a gateway's narrower right would be moot.
        if (options.GatewayAccounts.Intersect(options.NodeAccounts, StringComparer.Ordinal).FirstOrDefault() is { } both)
        {
            throw new ArgumentException($"service account '{both}' cannot be both a node account and a gateway account", nameof(options));
        }

        if (string.IsNullOrWhiteSpace(options.Audience))
        {
            throw new ArgumentException("the token audience is empty", nameof(options));
        }

        _client = client;
        _pods = pods;
        _trustDomain = trustDomain;
        _options = options;
        _nodeAccounts = new HashSet<string>(options.NodeAccounts, StringComparer.Ordinal);
        _metrics = metrics;
        _reviews = new TokenReviewCache(options.ReviewCacheEntries, options.ReviewCacheMaxAge, metrics);
        _gatewayAccounts = new HashSet<string>(options.GatewayAccounts, StringComparer.Ordinal);
    }

    public bool AsksForClientCertificate => false;

    public string Description =>
        $"nodes authenticated by projected service-account tokens (TokenReview, audience {_options.Audience}, node accounts {string.Join(", ", _options.NodeAccounts)}"
        + (_options.GatewayAccounts.Count == 0 ? ")" : $"; gateway accounts, each for its own identity only: {string.Join(", ", _options.GatewayAccounts)})");

    public async Task<CertificateDecision> AuthenticateAsync(CaCaller caller, CancellationToken cancellationToken)
    {
        const string scheme = "Bearer ";
        if (caller.Authorization is not { } authorization || !authorization.StartsWith(scheme, StringComparison.OrdinalIgnoreCase)
            || authorization.AsSpan(scheme.Length).Trim().IsEmpty)
        {
            return Refuse(RefusalReason.NoToken, "no bearer token in the authorization metadata");
        }

        var token = authorization[scheme.Length..].Trim();
        if (token.Length > _options.MaxTokenBytes)
        {
            return Refuse(RefusalReason.TokenRejected, $"bearer token of {token.Length} bytes exceeds the limit of {_options.MaxTokenBytes}");
        }

        var key = TokenReviewCache.KeyOf(token);
        var reviewed = _reviews.Find(key);
        var fresh = reviewed is null;
        if (reviewed is null)
        {
            var (answer, refusal) = await ReviewAsync(token, cancellationToken).ConfigureAwait(false);
            if (refusal is not null)
            {
                return refusal;
            }

            reviewed = answer!;
        }

        var username = reviewed.Username;
        var account = username.StartsWith(ServiceAccountUserPrefix, StringComparison.Ordinal) && username[ServiceAccountUserPrefix.Length..].Split(':') is [{ Length: > 0 } ns, { Length: > 0 } name]
            ? $"{ns}/{name}" : null;
        var gateway = account is not null && _gatewayAccounts.Contains(account);
        if (account is null || (!gateway && !_nodeAccounts.Contains(account)))
        {
            return Refuse(RefusalReason.NotANodeAccount, $"the token is {CertificateRequestAuthorizer.Shorten(username)}'s, not a node account's ({string.Join(", ", _options.NodeAccounts)})"
                + (_options.GatewayAccounts.Count == 0 ? "" : $" nor a gateway account's ({string.Join(", ", _options.GatewayAccounts)})"));
        }

        var (podName, podUid) = (reviewed.PodName, reviewed.PodUid);
        if (podName is null || podUid is null)
        {
            return Refuse(RefusalReason.TokenNotBoundToPod, $"the token of {account} is not bound to one pod (no {PodNameExtra} / {PodUidExtra}): a projected token from the {(gateway ? "gateway's" : "agent's")} pod is needed");
        }

        // Only a node agent's or gateway's pod-bound token is worth keeping; whether its pod still runs is checked below, every time.
        if (fresh)
        {
            _reviews.Add(key, token, reviewed);
        }

        var accountNamespace = account[..account.IndexOf('/')];
        var who = $"{account} pod {accountNamespace}/{podName} (uid {podUid})";
        var pod = _pods.Pod(podUid);
        if (pod is null || pod.Namespace != accountNamespace || pod.Name != podName || $"{pod.Namespace}/{pod.ServiceAccount}" != account)
        {
            return Refuse(RefusalReason.CallerPodMissing, $"caller {who}: no such pod in the pod watch ({_pods.Describe()})");
        }

        if (!pod.OnNode || NodeIdentity.ValidateNodeName(pod.Node) is not null)
        {
            return Refuse(RefusalReason.CallerPodNotOnNode, $"caller {who} is not running on a node (node '{pod.Node}', phase {pod.Phase ?? "unknown"})");
        }

        var node = new NodeIdentity(_trustDomain, pod.Node!);
        return gateway
            ? new CertificateDecision { Node = node, OnlyIdentity = new SpiffeId(_trustDomain, pod.Namespace, pod.ServiceAccount) }
            : new CertificateDecision { Node = node };
    }

    /// <summary>One TokenReview: the user it authenticates for our audience, or the refusal (transient when the review could not be made).</summary>
    private async Task<(ReviewedToken? Answer, CertificateDecision? Refusal)> ReviewAsync(string token, CancellationToken cancellationToken)
    {
        V1TokenReview review;
        using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
        {
            timeout.CancelAfter(_options.ReviewTimeout);
            try
            {
                _metrics.TokenReviewed();
                review = await _client.AuthenticationV1.CreateTokenReviewAsync(
                    new V1TokenReview { Spec = new V1TokenReviewSpec { Token = token, Audiences = [_options.Audience] } },
                    cancellationToken: timeout.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                throw;
            }
            catch (Exception e) when (e is HttpOperationException or HttpRequestException or OperationCanceledException or IOException or System.Text.Json.JsonException)
            {
                return (null, new CertificateDecision { Reason = RefusalReason.TokenReviewFailed, Detail = $"the TokenReview failed: {Describe(e)}", Transient = true });
            }
        }

        if (review is null)
        {
            // A 2xx with a JSON null body: the API server (or a proxy before it) misbehaved, not the caller.
            return (null, new CertificateDecision { Reason = RefusalReason.TokenReviewFailed, Detail = "the TokenReview failed: the API server answered with no object", Transient = true });
        }

        var status = review.Status;
        if (status?.Authenticated != true)
        {
            return (null, Refuse(RefusalReason.TokenRejected, $"the API server did not authenticate the token: {(string.IsNullOrEmpty(status?.Error) ? "no reason given" : status.Error)}"));
        }

        if (status.Audiences?.Contains(_options.Audience, StringComparer.Ordinal) != true)
        {
            // An API server that ignores spec.audiences would authenticate a token meant for someone else.
            return (null, Refuse(RefusalReason.TokenRejected,
                $"the token is authenticated for audiences [{string.Join(", ", status.Audiences ?? [])}], not {_options.Audience}"));
        }

        return (new ReviewedToken(status.User?.Username ?? "", Single(status.User?.Extra, PodNameExtra), Single(status.User?.Extra, PodUidExtra)), null);
    }

    private static string? Single(IDictionary<string, IList<string>>? extra, string key) =>
        extra is not null && extra.TryGetValue(key, out var values) && values is [{ Length: > 0 } value] ? value : null;

    private static CertificateDecision Refuse(string reason, string detail) => CertificateRequestAuthorizer.Refuse(reason, detail);

    private static string Describe(Exception e) => e switch
    {
        HttpOperationException { Response.StatusCode: HttpStatusCode.Forbidden or HttpStatusCode.Unauthorized } http =>
            $"HTTP {(int)http.Response.StatusCode}: may the CA's service account create tokenreviews (daemonset/ca.yaml)?",
        HttpOperationException http => $"HTTP {(int?)http.Response?.StatusCode} {http.Response?.ReasonPhrase}",
        OperationCanceledException => "no answer from the API server in time",
        _ when e.InnerException is { } inner => $"{e.Message}: {inner.Message}",
        _ => e.Message,
    };
}
