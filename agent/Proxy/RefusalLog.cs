namespace Weft.Proxy;

/// <summary>A warning per refusal reason at most once per interval, saying how many were refused since the last line.</summary>
internal sealed class RefusalLog(TimeSpan interval)
{
    private readonly RateLimitedWarning[] _warnings =
        Enum.GetValues<InboundRefusal>().Select(_ => new RateLimitedWarning("proxy", interval)).ToArray();

    public void Refused(InboundRefusal reason, string detail) =>
        _warnings[(int)reason].Warn(earlier =>
            $"inbound refused: {detail}{(earlier == 0 ? "" : $" ({earlier} more refused for this reason since the last line)")}");
}
