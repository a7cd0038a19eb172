using System.Globalization;
using System.Text;

namespace Weft.Gateway;

/// <summary>
/// Gateway API's Duration (GEP-2257): one to four parts, each of 1 to 5 digits and a unit <c>h</c>, <c>m</c>, <c>s</c>
/// or <c>ms</c> (<c>^([0-9]{1,5}(h|m|s|ms)){1,4}$</c>), the parts added up as Go's <c>time.ParseDuration</c> does:
/// <c>1h</c>, <c>500ms</c>, <c>1m30s</c>. Nothing else is read: no sign, no fraction, no space, no other unit.
/// </summary>
internal static class GatewayDuration
{
    private const int MaxParts = 4;
    private const int MaxDigits = 5;

    public static bool TryParse(string? text, out TimeSpan value)
    {
        value = TimeSpan.Zero;
        if (string.IsNullOrEmpty(text))
        {
            return false;
        }

        var total = TimeSpan.Zero;
        var parts = 0;
        var i = 0;
        while (i < text.Length)
        {
            if (++parts > MaxParts)
            {
                return false;
            }

            var start = i;
            long number = 0;
            while (i < text.Length && char.IsAsciiDigit(text[i]))
            {
                number = (number * 10) + (text[i] - '0');
                i++;
            }

            if (i == start || i - start > MaxDigits || i == text.Length)
            {
                return false;
            }

            // "ms" before "m": a part starts with a digit, so an "m" followed by "s" can only be milliseconds.
            TimeSpan unit;
            if (text[i] == 'm' && i + 1 < text.Length && text[i + 1] == 's')
            {
                unit = TimeSpan.FromMilliseconds(1);
                i += 2;
            }
            else
            {
                unit = text[i] switch
                {
                    'h' => TimeSpan.FromHours(1),
                    'm' => TimeSpan.FromMinutes(1),
                    's' => TimeSpan.FromSeconds(1),
                    _ => TimeSpan.Zero,
                };
                if (unit == TimeSpan.Zero)
                {
                    return false;
                }

                i++;
            }

            total += unit * number;
        }

        value = total;
        return true;
    }

    /// <summary>The shortest Duration for <paramref name="value"/> ("1m30s", "500ms", "0s"), whole milliseconds.</summary>
    public static string Format(TimeSpan value)
    {
        if (value <= TimeSpan.Zero)
        {
            return "0s";
        }

        var text = new StringBuilder();
        var hours = (long)value.TotalHours;
        if (hours > 0)
        {
            text.Append(hours.ToString(CultureInfo.InvariantCulture)).Append('h');
        }

        if (value.Minutes > 0)
        {
            text.Append(value.Minutes.ToString(CultureInfo.InvariantCulture)).Append('m');
        }

        if (value.Seconds > 0)
        {
            text.Append(value.Seconds.ToString(CultureInfo.InvariantCulture)).Append('s');
        }

        if (value.Milliseconds > 0)
        {
            text.Append(value.Milliseconds.ToString(CultureInfo.InvariantCulture)).Append("ms");
        }

        return text.Length == 0 ? "0s" : text.ToString();
    }
}
