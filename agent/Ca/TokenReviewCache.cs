using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace Weft.Ca;

/// <summary>What a positive TokenReview said of a token: its user and the pod it is bound to (empty when none).</summary>
internal sealed record ReviewedToken(string Username, string? PodName, string? PodUid);

/// <summary>
/// Positive TokenReview answers, keyed by the SHA-256 of the token (never the token), so an agent starting with
/// many identities costs one review rather than one per request. An entry lives until the token's own expiry
/// (its JWT <c>exp</c>) and at most <see cref="MaxAge"/>; a token without a readable <c>exp</c> is not cached.
/// Refusals are never cached, so a denied token is asked about again at its next request. What the answer only
/// starts (node account, the caller's pod in the pod watch) is checked for every request by the caller.
/// At <see cref="MaxEntries"/> the entry that expires soonest is dropped for the new one (counted).
/// </summary>
internal sealed class TokenReviewCache
{
    private readonly object _gate = new();
    private readonly Dictionary<string, (ReviewedToken Answer, DateTimeOffset Until)> _entries = new(StringComparer.Ordinal);
    private readonly CaMetrics _metrics;
    private readonly TimeProvider _time;

    public TokenReviewCache(int maxEntries, TimeSpan maxAge, CaMetrics metrics, TimeProvider? time = null)
    {
        MaxEntries = maxEntries;
        MaxAge = maxAge;
        _metrics = metrics;
        _time = time ?? TimeProvider.System;
    }

    public int MaxEntries { get; }

    public TimeSpan MaxAge { get; }

    public int Count
    {
        get
        {
            lock (_gate)
            {
                return _entries.Count;
            }
        }
    }

    /// <summary>The key a token is cached under: the hex SHA-256 of its bytes.</summary>
    public static string KeyOf(string token) => Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(token)));

    public ReviewedToken? Find(string key)
    {
        if (MaxEntries <= 0)
        {
            return null;
        }

        var now = _time.GetUtcNow();
        lock (_gate)
        {
            if (_entries.TryGetValue(key, out var entry))
            {
                if (now < entry.Until)
                {
                    _metrics.ReviewCacheLookup(hit: true);
                    return entry.Answer;
                }

                _entries.Remove(key);
                _metrics.ReviewCacheEntries(_entries.Count);
            }
        }

        _metrics.ReviewCacheLookup(hit: false);
        return null;
    }

    /// <summary>Keeps a positive answer for <paramref name="token"/> until its expiry, at most <see cref="MaxAge"/>.</summary>
    public void Add(string key, string token, ReviewedToken answer)
    {
        var now = _time.GetUtcNow();
        if (MaxEntries <= 0 || ExpiryOf(token) is not { } expires)
        {
            return;
        }

        var until = expires < now + MaxAge ? expires : now + MaxAge;
        if (until <= now)
        {
            return;
        }

        lock (_gate)
        {
            if (!_entries.ContainsKey(key) && _entries.Count >= MaxEntries)
            {
                foreach (var stale in _entries.Where(e => e.Value.Until <= now).Select(e => e.Key).ToList())
                {
                    _entries.Remove(stale);
                }

                if (_entries.Count >= MaxEntries)
                {
                    var soonest = _entries.MinBy(e => e.Value.Until).Key;
                    _entries.Remove(soonest);
                    _metrics.ReviewCacheEvicted();
                }
            }

            _entries[key] = (answer, until);
            _metrics.ReviewCacheEntries(_entries.Count);
        }
    }

    /// <summary>The <c>exp</c> claim of a JWT, unverified (the TokenReview verified the token); null when it has none.</summary>
    internal static DateTimeOffset? ExpiryOf(string token)
    {
        var parts = token.Split('.');
        if (parts.Length != 3)
        {
            return null;
        }

        try
        {
            using var claims = JsonDocument.Parse(Base64Url.DecodeFromChars(parts[1]));
            return claims.RootElement.ValueKind == JsonValueKind.Object && claims.RootElement.TryGetProperty("exp", out var exp) && exp.TryGetInt64(out var seconds)
                ? DateTimeOffset.FromUnixTimeSeconds(seconds) : null;
        }
        catch (Exception e) when (e is FormatException or JsonException or ArgumentOutOfRangeException)
        {
            return null;
        }
    }
}
