using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Weft.Identity;

/// <summary>The outcome of checking a peer: its identity, or why it was refused.</summary>
internal readonly record struct SpiffeVerification(SpiffeId? Id, string? Reason)
{
    public bool Verified => Id is not null;

    public static SpiffeVerification Refused(string reason) => new(null, reason);
}

/// <summary>Which end of a TLS handshake an SVID authenticates, and so which extended key usage it needs.</summary>
internal enum TlsPeerRole
{
    /// <summary>The connecting side: needs id-kp-clientAuth when the leaf has an extended key usage extension.</summary>
    Client,

    /// <summary>The accepting side: needs id-kp-serverAuth when the leaf has an extended key usage extension.</summary>
    Server,
}

/// <summary>
/// Checks a peer's X.509-SVID the way the SPIFFE X.509-SVID spec and TLS usage ask:
/// <code>
///   leaf + presented intermediates --X509Chain(custom roots = trust bundle, no revocation, now)--> a root
///   then: exactly one URI SAN, a SPIFFE ID, trust domain ours (or allowed),
///         cA=false, key usage present with digitalSignature and without keyCertSign/cRLSign,
///         and for a TLS role: an extended key usage, when present, holding clientAuth (client) or serverAuth (server)
/// </code>
/// docs/identity.md says which rule comes from which spec, and what is accepted when an extension is absent.
/// Immutable but for a bounded cache of what it accepted; the identity manager swaps in a new one (with an empty cache)
/// when the trust bundle changes.
/// <para>
/// The cache: a tunnel handshake checks the peer's SVID, and the same SVID comes back with every tunnel the same peer
/// dials until it is renewed. An accepted leaf, with the intermediates presented beside it and the role, is remembered
/// by a SHA-256 of their bytes for at most <see cref="RememberFor"/> and never past the earliest expiry (nor before the
/// latest start) of the chain that was built for it; the same bytes inside that window are accepted without building
/// the chain again. Refusals are not remembered. At most <see cref="RememberedLimit"/> entries: past it the cache starts
/// over. Only certificates that chained to the trust bundle get in, so a peer cannot fill it with junk.
/// </para>
/// </summary>
internal sealed class SpiffeVerifier
{
    private const string UriSanOid = "2.5.29.17";
    private const string ServerAuthOid = "1.3.6.1.5.5.7.3.1";
    private const string ClientAuthOid = "1.3.6.1.5.5.7.3.2";

    /// <summary>How long an accepted certificate's verdict is reused at most (see the class remarks).</summary>
    public static readonly TimeSpan RememberFor = TimeSpan.FromMinutes(10);

    /// <summary>How many accepted certificates are remembered before the cache starts over.</summary>
    public const int RememberedLimit = 1024;

    private readonly HashSet<string> _trustDomains;
    private readonly TimeProvider _time;
    private readonly ConcurrentDictionary<VerifiedKey, Accepted> _accepted = new();
    private long _reused;

    public SpiffeVerifier(string trustDomain, X509Certificate2Collection trustBundle, IEnumerable<string>? otherTrustDomains = null, TimeProvider? time = null)
    {
        if (SpiffeId.ValidateTrustDomain(trustDomain) is { } error)
        {
            throw new ArgumentException(error, nameof(trustDomain));
        }
        TrustDomain = trustDomain;
        TrustBundle = trustBundle;
        _trustDomains = new HashSet<string>(otherTrustDomains ?? [], StringComparer.Ordinal) { trustDomain };
        _time = time ?? TimeProvider.System;
    }

    public string TrustDomain { get; }

    public X509Certificate2Collection TrustBundle { get; }

    /// <summary>Our trust domain and any others whose identities we accept (their roots must be in the bundle).</summary>
    public IReadOnlySet<string> TrustDomains => _trustDomains;

    /// <summary>Accepted certificates remembered now (at most <see cref="RememberedLimit"/>).</summary>
    public int Remembered => _accepted.Count;

    /// <summary>Verifications answered from what was remembered, without building the chain again.</summary>
    public long Reused => Interlocked.Read(ref _reused);

    /// <summary>
    /// Checks <paramref name="leaf"/> as an X.509-SVID; with a <paramref name="role"/>, also that its extended key
    /// usage allows that end of a TLS handshake (without one, as a bare SVID, for callers outside TLS).
    /// </summary>
    public SpiffeVerification Verify(X509Certificate2? leaf, IEnumerable<X509Certificate2>? presentedIntermediates = null, TlsPeerRole? role = null)
    {
        if (leaf is null)
        {
            return SpiffeVerification.Refused("no certificate presented");
        }
        var now = _time.GetUtcNow();
        var key = VerifiedKey.Of(leaf, presentedIntermediates, role);
        if (_accepted.TryGetValue(key, out var known) && now >= known.From && now <= known.Until)
        {
            Interlocked.Increment(ref _reused);
            return new SpiffeVerification(known.Id, null);
        }

        if (CheckChain(leaf, presentedIntermediates, now, out var chainFrom, out var chainUntil) is { } chainError)
        {
            return SpiffeVerification.Refused(chainError);
        }

        List<string> uris;
        try
        {
            uris = UriSans(leaf);
        }
        catch (Exception e) when (e is System.Formats.Asn1.AsnContentException or CryptographicException)
        {
            return SpiffeVerification.Refused($"malformed subject alternative name: {e.Message}");
        }
        if (uris.Count != 1)
        {
            return SpiffeVerification.Refused(uris.Count == 0 ? "no URI SAN (not an X.509-SVID)" : $"{uris.Count} URI SANs (an X.509-SVID has exactly one)");
        }
        if (!SpiffeId.TryParse(uris[0], out var id, out var parseError))
        {
            return SpiffeVerification.Refused($"URI SAN '{uris[0]}' is not a SPIFFE ID: {parseError}");
        }
        if (!_trustDomains.Contains(id.TrustDomain))
        {
            return SpiffeVerification.Refused($"trust domain {id.TrustDomain} is not {string.Join(" or ", _trustDomains.Order(StringComparer.Ordinal))}");
        }
        try
        {
            if (LeafUsageError(leaf, role) is { } usageError)
            {
                return SpiffeVerification.Refused(usageError);
            }
        }
        catch (Exception e) when (e is System.Formats.Asn1.AsnContentException or CryptographicException)
        {
            return SpiffeVerification.Refused($"malformed certificate extension: {e.Message}");
        }

        Remember(key, new Accepted(id, chainFrom, Min(chainUntil, now + RememberFor)));
        return new SpiffeVerification(id, null);
    }

    private void Remember(VerifiedKey key, Accepted accepted)
    {
        if (_accepted.Count >= RememberedLimit)
        {
            _accepted.Clear();
        }

        _accepted[key] = accepted;
    }

    private static DateTimeOffset Min(DateTimeOffset a, DateTimeOffset b) => a < b ? a : b;

    /// <summary>An accepted certificate's identity and the window in which every certificate of its chain is valid.</summary>
    private sealed record Accepted(SpiffeId Id, DateTimeOffset From, DateTimeOffset Until);

    /// <summary>SHA-256 over the role, the leaf's bytes and each presented intermediate's bytes, each with its length.</summary>
    private readonly record struct VerifiedKey(UInt128 High, UInt128 Low)
    {
        public static VerifiedKey Of(X509Certificate2 leaf, IEnumerable<X509Certificate2>? intermediates, TlsPeerRole? role)
        {
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            Span<byte> prefix = stackalloc byte[4];
            prefix[0] = role switch { TlsPeerRole.Client => 1, TlsPeerRole.Server => 2, _ => 0 };
            hash.AppendData(prefix[..1]);
            Append(hash, leaf, prefix);
            foreach (var intermediate in intermediates ?? [])
            {
                Append(hash, intermediate, prefix);
            }

            Span<byte> digest = stackalloc byte[32];
            hash.GetHashAndReset(digest);
            return new VerifiedKey(
                System.Buffers.Binary.BinaryPrimitives.ReadUInt128LittleEndian(digest),
                System.Buffers.Binary.BinaryPrimitives.ReadUInt128LittleEndian(digest[16..]));
        }

        private static void Append(IncrementalHash hash, X509Certificate2 certificate, Span<byte> prefix)
        {
            var bytes = certificate.RawDataMemory.Span;
            System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(prefix, bytes.Length);
            hash.AppendData(prefix);
            hash.AppendData(bytes);
        }
    }

    /// <summary>
    /// The leaf rules: SPIFFE X.509-SVID 4.1, 4.3 and 5.2 (not a CA; key usage present, digitalSignature, no
    /// keyCertSign/cRLSign) and RFC 5280 4.2.1.12 (a present extended key usage limits the key to its purposes).
    /// </summary>
    private static string? LeafUsageError(X509Certificate2 leaf, TlsPeerRole? role)
    {
        var constraints = leaf.Extensions.OfType<X509BasicConstraintsExtension>().FirstOrDefault();
        if (constraints is { CertificateAuthority: true })
        {
            return "cA=true: a CA certificate is not an X.509-SVID leaf";
        }
        var usage = leaf.Extensions.OfType<X509KeyUsageExtension>().FirstOrDefault();
        if (usage is null)
        {
            return "no key usage extension: an X.509-SVID leaf must have one with digitalSignature";
        }
        if ((usage.KeyUsages & (X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign)) != 0)
        {
            return "leaf key usage has keyCertSign or cRLSign: a leaf must not be a CA";
        }
        if (!usage.KeyUsages.HasFlag(X509KeyUsageFlags.DigitalSignature))
        {
            return "leaf key usage lacks digitalSignature";
        }
        if (role is not { } needed)
        {
            return null;
        }
        var (purposeOid, purpose) = needed == TlsPeerRole.Client ? (ClientAuthOid, "clientAuth") : (ServerAuthOid, "serverAuth");
        // Every extended key usage extension must allow the purpose (a forged leaf may carry two); none at all allows every purpose.
        foreach (var extended in leaf.Extensions.OfType<X509EnhancedKeyUsageExtension>())
        {
            var purposes = extended.EnhancedKeyUsages.Cast<Oid>().Select(o => o.Value).ToList();
            // anyExtendedKeyUsage does not stand in for the named purpose, as in OpenSSL's TLS purpose checks (RFC 5280 allows refusing it).
            if (!purposes.Contains(purposeOid))
            {
                var has = purposes.Count == 0 ? "none" : string.Join(", ", purposes.Select(PurposeName));
                return $"{(needed == TlsPeerRole.Client ? "client" : "server")} certificate's extended key usage lacks {purpose} (has {has}): " +
                    $"not usable for TLS {(needed == TlsPeerRole.Client ? "client" : "server")} authentication";
            }
        }
        return null;
    }

    private static string PurposeName(string? oid) => oid switch
    {
        ServerAuthOid => "serverAuth",
        ClientAuthOid => "clientAuth",
        "2.5.29.37.0" => "anyExtendedKeyUsage",
        "1.3.6.1.5.5.7.3.3" => "codeSigning",
        "1.3.6.1.5.5.7.3.4" => "emailProtection",
        _ => oid ?? "?",
    };

    /// <summary>
    /// Null when <paramref name="leaf"/> chains to the trust bundle at <paramref name="now"/>, with the window in which every
    /// certificate of the chain built is valid; otherwise why not.
    /// </summary>
    private string? CheckChain(X509Certificate2 leaf, IEnumerable<X509Certificate2>? intermediates, DateTimeOffset now,
        out DateTimeOffset validFrom, out DateTimeOffset validUntil)
    {
        validFrom = DateTimeOffset.MinValue;
        validUntil = DateTimeOffset.MaxValue;
        var leafNotBefore = leaf.NotBefore.ToUniversalTime();
        var leafNotAfter = leaf.NotAfter.ToUniversalTime();
        if (now.UtcDateTime > leafNotAfter)
        {
            return $"certificate expired at {leafNotAfter:u}";
        }
        if (now.UtcDateTime < leafNotBefore)
        {
            return $"certificate not valid before {leafNotBefore:u}";
        }

        using var chain = new X509Chain();
        var policy = chain.ChainPolicy;
        policy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        policy.CustomTrustStore.AddRange(TrustBundle);
        policy.RevocationMode = X509RevocationMode.NoCheck;
        policy.DisableCertificateDownloads = true;
        policy.VerificationTime = now.UtcDateTime;
        foreach (var c in intermediates ?? [])
        {
            if (!ReferenceEquals(c, leaf) && !c.RawDataMemory.Span.SequenceEqual(leaf.RawDataMemory.Span))
            {
                policy.ExtraStore.Add(c);
            }
        }
        if (chain.Build(leaf))
        {
            foreach (var element in chain.ChainElements)
            {
                var from = new DateTimeOffset(element.Certificate.NotBefore.ToUniversalTime(), TimeSpan.Zero);
                var until = new DateTimeOffset(element.Certificate.NotAfter.ToUniversalTime(), TimeSpan.Zero);
                validFrom = from > validFrom ? from : validFrom;
                validUntil = until < validUntil ? until : validUntil;
            }

            return null;
        }
        var flags = chain.ChainStatus.Aggregate(X509ChainStatusFlags.NoError, (all, s) => all | s.Status);
        if (flags.HasFlag(X509ChainStatusFlags.NotTimeValid))
        {
            var stale = chain.ChainElements.Skip(1).Select(e => e.Certificate)
                .FirstOrDefault(c => now.UtcDateTime > c.NotAfter.ToUniversalTime() || now.UtcDateTime < c.NotBefore.ToUniversalTime());
            return stale is null ? "certificate not time valid" : $"CA certificate {stale.Subject} is outside its validity ({stale.NotBefore.ToUniversalTime():u}..{stale.NotAfter.ToUniversalTime():u})";
        }
        if (flags.HasFlag(X509ChainStatusFlags.NotSignatureValid))
        {
            return "bad signature in the certificate chain";
        }
        if (flags.HasFlag(X509ChainStatusFlags.PartialChain) || flags.HasFlag(X509ChainStatusFlags.UntrustedRoot))
        {
            return $"unknown CA: issuer {leaf.Issuer} does not chain to a root in the trust bundle";
        }
        if (flags.HasFlag(X509ChainStatusFlags.InvalidBasicConstraints))
        {
            return "an issuer in the chain is not a CA (basic constraints)";
        }
        return "certificate chain invalid: " + string.Join("; ", chain.ChainStatus.Select(s => $"{s.Status} {s.StatusInformation.Trim()}").Distinct());
    }

    /// <summary>Every URI in the leaf's subject alternative names, across all SAN extensions (a forged leaf may carry two).</summary>
    internal static List<string> UriSans(X509Certificate2 leaf)
    {
        var uris = new List<string>();
        foreach (var extension in leaf.Extensions)
        {
            if (extension.Oid?.Value != UriSanOid)
            {
                continue;
            }
            var san = extension as X509SubjectAlternativeNameExtension ?? new X509SubjectAlternativeNameExtension(extension.RawData, extension.Critical);
            uris.AddRange(UriNames(san.RawData));
        }
        return uris;
    }

    /// <summary>
    /// Reads uniformResourceIdentifier ([6] IA5String) entries straight from the GeneralNames DER, as the
    /// framework only enumerates DNS names and IP addresses.
    /// </summary>
    private static IEnumerable<string> UriNames(byte[] der)
    {
        var reader = new System.Formats.Asn1.AsnReader(der, System.Formats.Asn1.AsnEncodingRules.DER);
        var names = reader.ReadSequence();
        var uriTag = new System.Formats.Asn1.Asn1Tag(System.Formats.Asn1.TagClass.ContextSpecific, 6);
        var found = new List<string>();
        while (names.HasData)
        {
            var tag = names.PeekTag();
            if (tag.HasSameClassAndValue(uriTag))
            {
                found.Add(names.ReadCharacterString(System.Formats.Asn1.UniversalTagNumber.IA5String, uriTag));
            }
            else
            {
                names.ReadEncodedValue();
            }
        }
        return found;
    }
}
