using Prometheus;

namespace Weft.Ca;

/// <summary>Why the CA refused a request: the label of weft_ca_refused_total and the word in its log.</summary>
internal static class RefusalReason
{
    public const string NoClientCertificate = "no_client_certificate";
    public const string NodeCertificateUntrusted = "node_certificate_untrusted";
    public const string NotANodeCertificate = "not_a_node_certificate";
    public const string NoToken = "no_token";
    public const string TokenRejected = "token_rejected";
    public const string NotANodeAccount = "not_a_node_account";
    public const string TokenNotBoundToPod = "token_not_bound_to_pod";
    public const string CallerPodMissing = "caller_pod_missing";
    public const string CallerPodNotOnNode = "caller_pod_not_on_node";
    public const string TokenReviewFailed = "token_review_failed";
    public const string IdentityMissing = "identity_missing";
    public const string IdentityInvalid = "identity_invalid";
    public const string IdentityForeignTrustDomain = "identity_foreign_trust_domain";
    public const string IdentityNotCallersOwn = "identity_not_callers_own";
    public const string NoPodOnNode = "no_pod_on_node";
    public const string CsrTooLarge = "csr_too_large";
    public const string CsrInvalid = "csr_invalid";
    public const string CsrNames = "csr_names";
    public const string CsrIdentityMismatch = "csr_identity_mismatch";
    public const string RequestTooLarge = "request_too_large";
    public const string TooManyRequests = "too_many_requests";
    public const string IssueFailed = "issue_failed";
}

/// <summary>The CA's Prometheus metrics, in a registry of its own (served on <c>weft ca serve --metrics</c>).</summary>
internal sealed class CaMetrics
{
    private readonly Counter _issued;
    private readonly Counter _refused;
    private readonly Gauge _inFlight;
    private readonly Counter _signerReloads;
    private readonly Gauge _bundleRoots;
    private readonly Counter _publications;
    private readonly Counter _tokenReviews;
    private readonly Counter _reviewCache;
    private readonly Counter _reviewCacheEvictions;
    private readonly Gauge _reviewCacheEntries;

    public CaMetrics()
    {
        Registry = Metrics.NewCustomRegistry();
        var factory = Metrics.WithCustomRegistry(Registry);
        _issued = factory.CreateCounter("weft_ca_issued_total", "Workload certificates the CA signed.");
        _refused = factory.CreateCounter("weft_ca_refused_total", "Certificate requests the CA refused, by reason.", "reason");
        _inFlight = factory.CreateGauge("weft_ca_requests_in_flight", "Certificate requests being received or served now.");
        _signerReloads = factory.CreateCounter("weft_ca_signer_reloads_total",
            "Changes of the CA's certificate, key, trust bundle or chain files, by result: ok (signing with them now) or failed (unusable, the last good ones kept).", "result");
        _bundleRoots = factory.CreateGauge("weft_ca_trust_bundle_roots", "Roots in the CA's trust bundle now (two during a root rotation).");
        _publications = factory.CreateCounter("weft_ca_trust_bundle_publications_total",
            "Writes of the published trust bundle (ConfigMap or files) that agents read, by result (ok, failed).", "result");
        _tokenReviews = factory.CreateCounter("weft_ca_token_reviews_total", "TokenReviews the CA made (Kubernetes mode).");
        _reviewCache = factory.CreateCounter("weft_ca_token_review_cache_total", "Bearer tokens looked up in the TokenReview cache, by result (hit, miss).", "result");
        _reviewCacheEvictions = factory.CreateCounter("weft_ca_token_review_cache_evictions_total", "Cached TokenReview answers dropped to make room for a new one (the cache was at its entry limit).");
        _reviewCacheEntries = factory.CreateGauge("weft_ca_token_review_cache_entries", "Cached TokenReview answers held now.");
        foreach (var result in new[] { "ok", "failed" })
        {
            _signerReloads.WithLabels(result);
            _publications.WithLabels(result);
        }

        _reviewCache.WithLabels("hit");
        _reviewCache.WithLabels("miss");
    }

    public CollectorRegistry Registry { get; }

    public void Issued() => _issued.Inc();

    public void Refused(string reason) => _refused.WithLabels(reason).Inc();

    public double IssuedCount => _issued.Value;

    public double RefusedCount(string reason) => _refused.WithLabels(reason).Value;

    public double InFlight => _inFlight.Value;

    public void SignerReloaded(bool ok) => _signerReloads.WithLabels(ok ? "ok" : "failed").Inc();

    public double SignerReloads(bool ok) => _signerReloads.WithLabels(ok ? "ok" : "failed").Value;

    public void BundleRoots(int count) => _bundleRoots.Set(count);

    public void Published(bool ok) => _publications.WithLabels(ok ? "ok" : "failed").Inc();

    public double Publications(bool ok) => _publications.WithLabels(ok ? "ok" : "failed").Value;

    public void TokenReviewed() => _tokenReviews.Inc();

    public double TokenReviews => _tokenReviews.Value;

    public void ReviewCacheLookup(bool hit) => _reviewCache.WithLabels(hit ? "hit" : "miss").Inc();

    public double ReviewCacheHits => _reviewCache.WithLabels("hit").Value;

    public void ReviewCacheEvicted() => _reviewCacheEvictions.Inc();

    public double ReviewCacheEvictions => _reviewCacheEvictions.Value;

    public void ReviewCacheEntries(int count) => _reviewCacheEntries.Set(count);

    public double ReviewCacheEntryCount => _reviewCacheEntries.Value;

    public void RequestStarted() => _inFlight.Inc();

    public void RequestEnded() => _inFlight.Dec();

    /// <summary>The text exposition, as a scrape sees it.</summary>
    public async Task<string> ExportAsync()
    {
        using var buffer = new MemoryStream();
        await Registry.CollectAndExportAsTextAsync(buffer).ConfigureAwait(false);
        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }
}
